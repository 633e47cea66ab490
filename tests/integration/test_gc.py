"""Garbage collection (core.gc) over the embedded adapters, in process: what is swept, what is kept,
dry runs, resuming from a cursor, the lease, and a race with sessions that reuse chunks."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidInput
from core.gc import GcReport, GcSettings, collect, lease_active, run_scheduled
from core.identity import ManifestKey
from core.local.file_blobs import FileBlobStore
from core.local.sqlite_store import SqliteDatabase, SqliteManifestStore
from core.manifest import STATUS_READY, Manifest, PackSummary, UploadSession, now_iso
from core.marks import Confirmed, write_confirmed, write_intent
from core.pack import FILE, Chunk, FileEntry, PackIndex
from core.ports import BlobInfo, BlobStore, HttpMethod
from core.storage_layout import (
    GC_CURSOR_KEY,
    chunk_key,
    gc_lease_key,
    index_key,
    staging_chunk_key,
    staging_index_key,
    staging_meta_key,
)

SIGNING_KEY = b"gc-test-signing-key-0123456789abcdef"
LATER = 2 * 3600.0  # past the default grace period of one hour, well before the abandonment age
CELL = 4096


# ---- building a catalog by hand -----------------------------------------------------------------


class World:
    """A manifest store and a blob store, plus the few writes the service would make."""

    def __init__(self, store: SqliteManifestStore, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    @staticmethod
    def digest(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    def chunk(self, catalog_id: str, name: str, size: int = 100) -> str:
        digest = self.digest(name)
        self.blobs.put_bytes(chunk_key(catalog_id, digest), b"z" * size)
        return digest

    def has(self, catalog_id: str, name: str) -> bool:
        return self.blobs.head(chunk_key(catalog_id, self.digest(name))) is not None

    @staticmethod
    def index(digests: Iterable[str]) -> PackIndex:
        chunks = tuple(Chunk(i * CELL, CELL, d, 100) for i, d in enumerate(digests))
        return PackIndex(CELL, (FileEntry("disk.hdd", FILE, 0o644, len(chunks) * CELL, chunks),))

    def ready(self, catalog_id: str, version: str, names: Iterable[str], **fields: Any) -> Manifest:
        """A committed version: its chunks in storage, its index at index_key, the manifest ready."""
        index = self.index(self.chunk(catalog_id, n) for n in names)
        key = ManifestKey(catalog_id, version, "arm64")
        self.blobs.put_bytes(index_key(key.prefix), index.canonical_bytes())
        manifest = Manifest(
            catalog_id=catalog_id,
            version=version,
            architecture="arm64",
            status=STATUS_READY,
            storage_prefix=key.prefix,
            pack=PackSummary(digest=index.digest, chunk_size=CELL, chunk_count=len(index.files[0].chunks)),
            **fields,
        )
        self.store.create(manifest)
        return manifest

    def session(
        self,
        catalog_id: str,
        version: str,
        *,
        staged: Iterable[str] = (),
        intent: Iterable[str] = (),
        confirmed: Iterable[str] = (),
        started_at: str | None = None,
        over: Manifest | None = None,
        meta: bool = True,
    ) -> str:
        """An open upload: meta.json, a staged index naming ``staged``, marks naming the others.

        ``over`` is an existing manifest the session is a force push onto. Returns the nonce."""
        nonce = secrets.token_urlsafe(12)
        upload = UploadSession(f"up-{nonce}", started_at or now_iso(), "alice", staging_index_key(nonce), 0)
        if meta:
            doc = {"catalog_id": catalog_id, "version": version, "architecture": "arm64"}
            self.blobs.put_bytes(staging_meta_key(nonce), json.dumps(doc).encode())
        self.blobs.put_bytes(staging_index_key(nonce), self.index(self.digest(n) for n in staged).canonical_bytes())
        if over is None:
            self.store.create(Manifest(catalog_id=catalog_id, version=version, architecture="arm64", upload=upload))
        else:
            stored = self.store.get(over.key)
            assert stored is not None
            self.store.replace(replace(stored.manifest, upload=upload), stored.etag)
        intent_digests = [self.digest(n) for n in intent]
        if intent_digests:
            write_intent(self.blobs, nonce, intent_digests)
        write_confirmed(self.blobs, nonce, {self.digest(n): Confirmed(100) for n in confirmed})
        return nonce

    def tombstone(self, manifest: Manifest) -> None:
        stored = self.store.get(manifest.key)
        assert stored is not None
        self.store.replace(stored.manifest.tombstone("bob"), stored.etag)

    def keys(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.blobs.list(prefix)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = SqliteManifestStore(SqliteDatabase(tmp_path / "db.sqlite"))
    blobs = FileBlobStore(tmp_path / "blobs", "http://127.0.0.1:8080", SIGNING_KEY)
    yield World(store, blobs)
    store.close()


def _later() -> float:
    return time.time() + LATER


def _days_ago(days: float) -> str:
    return datetime.fromtimestamp(time.time() - days * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _run_to_end(world: World, **kwargs: Any) -> tuple[GcReport, int]:
    """Every step of one walk, summed; and how many steps it took."""
    total = GcReport(dry_run=kwargs.get("dry_run", False))
    cursor: str | None = None
    steps = 0
    while True:
        report = collect(world.store, world.blobs, cursor=cursor, **kwargs)
        steps += 1
        for name in ("catalogs", "chunks_deleted", "chunk_bytes_deleted", "staged_deleted", "staged_bytes_deleted",
                     "sessions_aborted"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(report, name))
        cursor = report.next_cursor
        if cursor is None:
            return total, steps
        assert steps < 100


# ---- what is swept and what is kept -------------------------------------------------------------


def test_unreferenced_chunks_are_deleted_and_shared_ones_kept(world: World) -> None:
    world.ready("ubuntu", "1", ["a", "b"])
    world.ready("ubuntu", "2", ["b", "c"])
    gone = world.ready("ubuntu", "0", ["e", "b"])
    world.tombstone(gone)  # a tombstone references nothing, even if its old index were still there
    world.chunk("ubuntu", "orphan", size=321)
    world.ready("debian", "1", ["orphan"])  # dedup is per catalog id: debian's copy is its own

    report = collect(world.store, world.blobs, now=_later())

    assert [world.has("ubuntu", n) for n in "abc"] == [True, True, True]
    assert not world.has("ubuntu", "e")
    assert not world.has("ubuntu", "orphan")
    assert world.has("debian", "orphan")
    assert report == GcReport(
        catalogs=2, chunks_deleted=2, chunk_bytes_deleted=421, staged_deleted=0, staged_bytes_deleted=0,
        sessions_aborted=0, next_cursor=None, dry_run=False,
    )  # fmt: skip
    assert world.store.get(gone.key) is not None  # the tombstone itself stays


def test_report_holds_counts_only(world: World) -> None:
    world.ready("secret-catalog", "1", ["a"])
    world.ready("other", "1", ["a"])
    report = collect(world.store, world.blobs, budget_seconds=0, now=_later())
    text = json.dumps(report.to_json())
    assert "secret-catalog" not in text and "other" not in text
    assert set(report.to_json()) == {
        "catalogs", "chunks_deleted", "chunk_bytes_deleted", "staged_deleted", "staged_bytes_deleted",
        "sessions_aborted", "next_cursor", "dry_run",
    }  # fmt: skip


def test_chunks_younger_than_the_grace_period_are_kept(world: World) -> None:
    world.chunk("ubuntu", "fresh")
    world.ready("ubuntu", "1", ["a"])
    assert collect(world.store, world.blobs).chunks_deleted == 0  # now: the orphan is seconds old
    assert world.has("ubuntu", "fresh")
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 1
    assert not world.has("ubuntu", "fresh")


def test_chunks_of_a_ready_pdpack_or_uploading_manifest_without_index(world: World) -> None:
    """An imported original-format pack names no chunk; a version still uploading has no index yet."""
    world.chunk("legacy", "loose")
    world.store.create(
        Manifest(catalog_id="legacy", version="1", architecture="arm64", status=STATUS_READY,
                 pack=PackSummary(format="pdpack", key="legacy/legacy-1.pdpack", meta_key="legacy/legacy-1.meta"))
    )  # fmt: skip
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 1


def test_a_ready_version_whose_index_cannot_be_read_stops_the_sweep_of_its_catalog(world: World) -> None:
    broken = world.ready("ubuntu", "1", ["a"])
    world.chunk("ubuntu", "orphan")
    world.blobs.delete([index_key(broken.key.prefix)])
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 0
    assert world.has("ubuntu", "a") and world.has("ubuntu", "orphan")
    world.blobs.put_bytes(index_key(broken.key.prefix), b"{not json")
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 0


def test_chunks_named_by_an_open_session_are_kept(world: World) -> None:
    for name in ("staged", "intent", "confirmed", "orphan"):
        world.chunk("ubuntu", name)
    world.session("ubuntu", "2", staged=["staged"], intent=["intent"], confirmed=["confirmed"])

    report = collect(world.store, world.blobs, now=_later())

    assert report.chunks_deleted == 1
    assert [world.has("ubuntu", n) for n in ("staged", "intent", "confirmed", "orphan")] == [True, True, True, False]


def test_a_force_push_session_protects_the_old_and_the_new_chunks(world: World) -> None:
    old = world.ready("ubuntu", "1", ["a", "b"])
    world.chunk("ubuntu", "new")
    world.session("ubuntu", "1", over=old, intent=["new"])
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 0


def test_a_session_with_an_invalid_staged_index_still_protects_its_marks(world: World) -> None:
    world.chunk("ubuntu", "intent")
    nonce = world.session("ubuntu", "2", intent=["intent"])
    world.blobs.put_bytes(staging_index_key(nonce), b"\x00garbage")
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 0
    world.blobs.delete([staging_index_key(nonce)])
    assert collect(world.store, world.blobs, now=_later()).chunks_deleted == 0
    assert world.has("ubuntu", "intent")


# ---- abandoned sessions and staging -------------------------------------------------------------


def test_abandoned_sessions_are_aborted(world: World) -> None:
    world.chunk("ubuntu", "abandoned-only")
    world.session("ubuntu", "new", intent=["abandoned-only"], started_at=_days_ago(8))
    ready = world.ready("ubuntu", "1", ["a"])
    world.session("ubuntu", "1", over=ready, intent=["a"], started_at=_days_ago(8))
    revoked = world.ready("ubuntu", "r", ["r"], revoked=True, revoked_by="bob")
    world.session("ubuntu", "r", over=revoked, started_at=_days_ago(9))
    world.chunk("ubuntu", "young-session")
    world.session("ubuntu", "fresh", intent=["young-session"], started_at=_days_ago(6))

    report = collect(world.store, world.blobs, now=_later())

    assert report.sessions_aborted == 3
    assert world.store.get(ManifestKey("ubuntu", "new", "arm64")) is None
    kept = world.store.get(ready.key)
    assert kept is not None and kept.manifest.is_ready and kept.manifest.upload is None
    burned = world.store.get(revoked.key)
    assert burned is not None and burned.manifest.revoked and burned.manifest.upload is None
    fresh = world.store.get(ManifestKey("ubuntu", "fresh", "arm64"))
    assert fresh is not None and fresh.manifest.upload is not None
    assert not world.has("ubuntu", "abandoned-only")
    assert world.has("ubuntu", "young-session") and world.has("ubuntu", "a")


def test_staging_of_sessions_that_no_longer_exist_is_removed(world: World) -> None:
    live = world.session("ubuntu", "live", intent=["x"])
    live_without_meta = world.session("ubuntu", "quiet", intent=["x"], meta=False)
    aborted = world.session("ubuntu", "aborted", intent=["x"])
    world.blobs.put_bytes(staging_chunk_key(aborted, world.digest("x")), b"staged bytes")
    world.store.delete(ManifestKey("ubuntu", "aborted", "arm64"))
    replaced = world.session("ubuntu", "taken", intent=["x"])
    taken = world.store.get(ManifestKey("ubuntu", "taken", "arm64"))
    assert taken is not None and taken.manifest.upload is not None
    newer = replace(taken.manifest.upload, index_key=staging_index_key("N" * 16))
    world.store.replace(replace(taken.manifest, upload=newer), taken.etag)  # a force push took it over
    orphan = secrets.token_urlsafe(12)  # no meta.json, no manifest: judged by age alone
    world.blobs.put_bytes(staging_chunk_key(orphan, world.digest("y")), b"12345")

    def nonces() -> set[str]:
        return {key.split("/")[1] for key in world.keys("staging/")}

    assert nonces() == {live, live_without_meta, aborted, replaced, orphan}
    assert collect(world.store, world.blobs).staged_deleted == 0  # everything is younger than the grace period
    assert len(nonces()) == 5

    report = collect(world.store, world.blobs, now=_later())

    assert nonces() == {live, live_without_meta}
    assert report.staged_deleted == 4 + 3 + 1  # meta, index, mark (+ a staged chunk); the same; one chunk
    assert report.staged_bytes_deleted > 0


def test_an_abandoned_session_loses_its_staging_area(world: World) -> None:
    nonce = world.session("ubuntu", "old", intent=["x"], started_at=_days_ago(8))
    report = collect(world.store, world.blobs, now=_later())
    assert report.sessions_aborted == 1
    assert report.staged_deleted == 3  # meta, index, one mark
    assert world.keys(f"staging/{nonce}/") == []


# ---- dry run --------------------------------------------------------------------------------------


def _messy(world: World) -> None:
    world.ready("ubuntu", "1", ["a", "b"])
    world.chunk("ubuntu", "orphan-1", size=10)
    world.chunk("ubuntu", "orphan-2", size=20)
    world.chunk("ubuntu", "abandoned")
    world.session("ubuntu", "2", intent=["abandoned"], started_at=_days_ago(8))
    world.session("ubuntu", "3", intent=["a"])
    world.ready("debian", "1", ["d"])
    world.chunk("debian", "orphan-3", size=30)
    dead = secrets.token_urlsafe(12)
    world.blobs.put_bytes(staging_chunk_key(dead, world.digest("q")), b"12345678")


def _state(world: World) -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
    manifests = [m.to_record() for m in world.store.iter_all()]
    return [(i.key, i.size) for i in world.blobs.list("")], manifests


def test_a_dry_run_deletes_nothing_and_reports_what_a_real_run_does(world: World) -> None:
    _messy(world)
    at = _later()
    before = _state(world)
    dry = collect(world.store, world.blobs, dry_run=True, now=at)
    assert _state(world) == before
    assert world.keys("gc/") == []  # a dry run takes no lease
    real = collect(world.store, world.blobs, now=at)
    assert dry.dry_run and not real.dry_run
    assert replace(dry, dry_run=False) == real
    assert real.chunks_deleted == 4 and real.sessions_aborted == 1 and real.staged_deleted == 4
    assert real.chunk_bytes_deleted == 10 + 20 + 100 + 30


def test_dry_run_counts_match_step_by_step(world: World) -> None:
    _messy(world)
    at = _later()
    dry, _ = _run_to_end(world, dry_run=True, budget_seconds=0, now=at)
    real, _ = _run_to_end(world, budget_seconds=0, now=at)
    assert replace(dry, dry_run=False) == real


# ---- cursor and budget ----------------------------------------------------------------------------


def test_a_zero_budget_does_one_catalog_per_step_and_the_cursor_resumes(world: World) -> None:
    ids = [f"cat{i}" for i in range(5)]
    for cid in ids:
        world.ready(cid, "1", ["kept"])
        world.chunk(cid, "orphan")
    dead = secrets.token_urlsafe(12)
    world.blobs.put_bytes(staging_chunk_key(dead, world.digest("q")), b"1")

    cursors: list[str | None] = []
    cursor: str | None = None
    steps: list[GcReport] = []
    while True:
        report = collect(world.store, world.blobs, cursor=cursor, budget_seconds=0, now=_later())
        steps.append(report)
        cursors.append(report.next_cursor)
        cursor = report.next_cursor
        if cursor is None:
            break
        assert len(steps) < 20
    assert [s.catalogs for s in steps[:5]] == [1] * 5
    assert sum(s.catalogs for s in steps) == 5
    assert sum(s.chunks_deleted for s in steps) == 5
    assert sum(s.staged_deleted for s in steps) == 1
    assert all(world.has(cid, "kept") and not world.has(cid, "orphan") for cid in ids)
    assert len(set(cursors)) == len(cursors)  # every step moved on
    assert not any(cid in (c or "") for c in cursors for cid in ids)  # opaque: no catalog id in a cursor


def test_a_generous_budget_finishes_in_one_step(world: World) -> None:
    for cid in ("a1", "b2", "c3"):
        world.chunk(cid, "orphan")
        world.ready(cid, "1", ["x"])
    report = collect(world.store, world.blobs, budget_seconds=60, now=_later())
    assert report.catalogs == 3 and report.chunks_deleted == 3 and report.next_cursor is None


def test_a_cursor_that_is_not_one_is_refused(world: World) -> None:
    for bad in ("ubuntu", "c:xyz", "s:no/slash", "c:" + "0" * 31):
        with pytest.raises(InvalidInput):
            collect(world.store, world.blobs, cursor=bad)


def test_a_catalog_added_behind_the_cursor_waits_for_the_next_walk(world: World) -> None:
    world.ready("first", "1", ["x"])
    world.ready("second", "1", ["x"])
    report = collect(world.store, world.blobs, budget_seconds=0, now=_later())
    assert report.next_cursor is not None
    total, _ = _run_to_end(world, budget_seconds=0, now=_later())
    assert total.catalogs == 2


def test_only_sweeps_one_catalog_whole(world: World) -> None:
    for cid in ("one", "two"):
        world.ready(cid, "1", ["x"])
        world.chunk(cid, "orphan")
    report = collect(world.store, world.blobs, only="one", settings=GcSettings(grace_seconds=0), budget_seconds=0)
    assert report.catalogs == 1 and report.chunks_deleted == 1 and report.next_cursor is None
    assert not world.has("one", "orphan") and world.has("two", "orphan")


def test_run_scheduled_keeps_its_cursor_in_storage(world: World) -> None:
    for cid in ("a1", "b2", "c3"):
        world.ready(cid, "1", ["x"])
    world.chunk("b2", "orphan")
    old = time.time() - LATER  # the orphan must be older than the real grace period
    path = world.blobs.root / "objects" / chunk_key("b2", world.digest("orphan"))  # type: ignore[attr-defined]
    os.utime(path, (old, old))
    saved: list[str | None] = []
    for _ in range(10):
        report = run_scheduled(world.store, world.blobs, budget_seconds=0)
        saved.append(world.blobs.get_bytes(GC_CURSOR_KEY).decode() if world.blobs.head(GC_CURSOR_KEY) else None)
        if report.next_cursor is None:
            break
    assert saved[-1] is None and all(s is not None for s in saved[:-1]) and len(saved) == 4
    assert not world.has("b2", "orphan")
    world.blobs.put_bytes(GC_CURSOR_KEY, b'{"cursor": "from an older version"}')
    report = run_scheduled(world.store, world.blobs, budget_seconds=60)  # a cursor it cannot read: start over
    assert report.catalogs == 3 and world.blobs.head(GC_CURSOR_KEY) is None


# ---- the lease ------------------------------------------------------------------------------------


class RecordingBlobs(BlobStore):
    """A BlobStore that passes everything on and records each call (and whether the lease was held
    when a chunk was deleted)."""

    def __init__(self, inner: BlobStore, catalog_id: str = "ubuntu") -> None:
        self.inner = inner
        self.catalog_id = catalog_id
        self.calls: list[tuple[str, str]] = []
        self.deletes_under_lease: list[bool] = []

    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        return self.inner.presign(key, method, expires_in)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        self.calls.append(("list", prefix))
        return self.inner.list(prefix)

    def head(self, key: str) -> BlobInfo | None:
        self.calls.append(("head", key))
        return self.inner.head(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.calls.append(("put", key))
        self.inner.put_bytes(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.calls.append(("put_if_absent", key))
        return self.inner.put_if_absent(key, data)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.calls.append(("get", key))
        return self.inner.get_bytes(key, max_bytes)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self.calls.append(("delete", key))
        if any("/chunks/" in k and k.startswith("catalogs/") for k in keys):
            self.deletes_under_lease.append(lease_active(self.inner, self.catalog_id))
        self.inner.delete(keys)


@pytest.fixture
def recording(world: World) -> RecordingBlobs:
    recording = RecordingBlobs(world.blobs)
    world.blobs = recording
    return recording


def test_the_lease_is_held_while_chunks_are_deleted_and_removed_after(world: World, recording: RecordingBlobs) -> None:
    world.ready("ubuntu", "1", ["a"])
    for i in range(3):
        world.chunk("ubuntu", f"orphan-{i}")
    recording.calls.clear()

    report = collect(world.store, world.blobs, now=_later())

    assert report.chunks_deleted == 3
    assert recording.deletes_under_lease == [True]
    lease = gc_lease_key("ubuntu")
    writes = [i for i, call in enumerate(recording.calls) if call[1] == lease and call[0].startswith("put")]
    marking = [i for i, call in enumerate(recording.calls) if call == ("get", index_key("catalogs/ubuntu/1/arm64"))]
    removed = [i for i, call in enumerate(recording.calls) if call == ("delete", lease)]
    assert writes and marking and removed and writes[0] < marking[0] < removed[-1]
    assert recording.inner.head(lease) is None
    assert not lease_active(world.blobs, "ubuntu")


def test_the_lease_is_removed_when_the_sweep_fails(world: World, recording: RecordingBlobs) -> None:
    world.ready("ubuntu", "1", ["a"])

    def broken(prefix: str) -> Iterator[BlobInfo]:
        raise OSError("disk on fire")

    recording.list = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        collect(world.store, world.blobs, now=_later())
    assert recording.inner.head(gc_lease_key("ubuntu")) is None


def test_a_catalog_whose_lease_another_sweep_holds_is_skipped(world: World) -> None:
    world.ready("ubuntu", "1", ["a"])
    world.chunk("ubuntu", "orphan")
    world.blobs.put_bytes(gc_lease_key("ubuntu"), json.dumps({"expires": time.time() + 60}).encode())
    assert lease_active(world.blobs, "ubuntu")
    report = collect(world.store, world.blobs, now=time.time())
    assert report.chunks_deleted == 0 and world.blobs.head(gc_lease_key("ubuntu")) is not None  # not ours to remove

    world.blobs.put_bytes(gc_lease_key("ubuntu"), json.dumps({"expires": time.time() - 1}).encode())  # crashed
    assert not lease_active(world.blobs, "ubuntu")
    report = collect(world.store, world.blobs, now=_later())
    assert report.chunks_deleted == 1 and world.blobs.head(gc_lease_key("ubuntu")) is None


def test_a_sweep_that_outlives_its_lease_deletes_nothing(world: World) -> None:
    world.ready("ubuntu", "1", ["a"])
    world.chunk("ubuntu", "orphan")
    report = collect(world.store, world.blobs, settings=GcSettings(lease_seconds=0), now=_later())
    assert report.chunks_deleted == 0 and world.has("ubuntu", "orphan")
    assert world.blobs.head(gc_lease_key("ubuntu")) is None


def test_lease_active_reads_expiry_and_ignores_junk(world: World) -> None:
    key = gc_lease_key("ubuntu")
    assert not lease_active(world.blobs, "ubuntu")
    world.blobs.put_bytes(key, b'{"expires": 1000}')
    assert lease_active(world.blobs, "ubuntu", now=999) and not lease_active(world.blobs, "ubuntu", now=1000)
    world.blobs.put_bytes(key, b"not json")
    assert not lease_active(world.blobs, "ubuntu", now=0)


# ---- the race -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_chunk_a_session_reused_without_a_lease_is_ever_deleted(world: World) -> None:
    """Sessions keep reusing leftover chunks (the service's chunks request: intent mark, lease check,
    HEAD) while sweeps with no grace period run back to back. Whatever a session saw as reused,
    having seen no lease, must survive every sweep."""
    catalog_id = "race"
    world.ready(catalog_id, "base", ["base"])
    stop = threading.Event()
    reused: list[str] = []
    refused = 0
    missed = 0
    errors: list[BaseException] = []

    def sessions() -> None:
        nonlocal refused, missed
        try:
            i = 0
            while not stop.is_set() and i < 400:
                leftover = world.chunk(catalog_id, f"leftover-{i}")  # a chunk nothing references yet
                wanted = [leftover, world.digest(f"leftover-{i - 3}")] if i >= 3 else [leftover]
                nonce = world.session(catalog_id, f"s{i}")
                write_intent(world.blobs, nonce, wanted)  # 1. name the digests
                if lease_active(world.blobs, catalog_id):  # 2. then look at the lease
                    refused += 1  # the service answers 503
                else:
                    for digest in wanted:  # 3. HEAD: a chunk that is there is reused, not uploaded
                        if world.blobs.head(chunk_key(catalog_id, digest)) is not None:
                            reused.append(digest)
                        else:
                            missed += 1
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=sessions)
    thread.start()
    sweeps = 0
    deleted = 0
    deadline = time.monotonic() + 8
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            deleted += collect(world.store, world.blobs, settings=GcSettings(grace_seconds=0)).chunks_deleted
            sweeps += 1
    finally:
        stop.set()
        thread.join(30)
    deleted += collect(world.store, world.blobs, settings=GcSettings(grace_seconds=0)).chunks_deleted
    assert not errors, errors
    assert sweeps >= 2 and reused
    lost = [d for d in set(reused) if world.blobs.head(chunk_key(catalog_id, d)) is None]
    assert lost == [], f"{len(lost)} reused chunk(s) were swept"
    print(f"race: {sweeps} sweeps, {deleted} deleted, {len(reused)} reused, {refused} refused, {missed} missed")


def test_the_race_test_catches_a_collector_that_ignores_marks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: without the marks as roots, a reused chunk is swept."""
    import core.gc

    world.chunk("race", "leftover")
    nonce = world.session("race", "s1")
    write_intent(world.blobs, nonce, [world.digest("leftover")])
    assert not lease_active(world.blobs, "race")
    assert world.blobs.head(chunk_key("race", world.digest("leftover"))) is not None  # reused
    monkeypatch.setattr(core.gc, "read_marks", lambda blobs, nonce: type("M", (), {"named": frozenset()})())
    collect(world.store, world.blobs, settings=GcSettings(grace_seconds=0))
    assert not world.has("race", "leftover")


# ---- the scheduled functions --------------------------------------------------------------------

_SCHEDULED = r"""
import os, sys, time, types
from pathlib import Path

repo, frontend, data = sys.argv[1], sys.argv[2], Path(sys.argv[3])
sys.path[:0] = [str(Path(repo) / ("aws_app" if frontend == "aws" else "azure_app")), repo]
from core.gc import GcReport
from core.local.file_blobs import FileBlobStore
from core.local.sqlite_store import SqliteDatabase, SqliteManifestStore

def store(*args, **kwargs):
    return SqliteManifestStore(SqliteDatabase(data / "db.sqlite"))

def blobs(*args, **kwargs):
    return FileBlobStore(data / "blobs", "http://127.0.0.1:8080", b"gc-test-signing-key-0123456789abcdef")

if frontend == "aws":
    for name, attr, factory in (("dynamo_store", "DynamoManifestStore", store), ("s3_blobs", "S3BlobStore", blobs)):
        module = types.ModuleType("chalicelib." + name)
        setattr(module, attr, factory)
        sys.modules["chalicelib." + name] = module
    import app
    context = types.SimpleNamespace(get_remaining_time_in_millis=lambda: 900_000)
    event = {"version": "0", "account": "1", "region": "eu-west-1", "detail": {}, "source": "aws.events",
             "detail-type": "Scheduled Event", "time": "2026-01-01T00:17:00Z", "id": "x", "resources": []}
    app.collect_garbage(event, context)
else:
    import function_app
    from azurelib import bootstrap
    bootstrap.load_azure_settings = lambda env: None
    bootstrap._stores = lambda settings: (store(), None, blobs())
    [gc] = [f for f in function_app.app.get_functions() if f.get_function_name() == "gc"]
    gc.get_user_function()(timer=None)
print("ok")
"""


@pytest.mark.parametrize("frontend", ["aws", "azure"])
def test_the_scheduled_function_runs_a_step(frontend: str, world: World, tmp_path: Path) -> None:
    world.ready("ubuntu", "1", ["a"])
    world.chunk("ubuntu", "orphan")
    path = world.blobs.root / "objects" / chunk_key("ubuntu", world.digest("orphan"))  # type: ignore[attr-defined]
    old = time.time() - LATER
    os.utime(path, (old, old))
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDCAT_")}
    done = subprocess.run(
        [sys.executable, "-c", _SCHEDULED, str(repo), frontend, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**env, "PDCAT_TABLE": "t", "PDCAT_BUCKET": "b", "PDCAT_LOG_LEVEL": "INFO"},
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert not world.has("ubuntu", "orphan") and world.has("ubuntu", "a")
    assert world.blobs.head(GC_CURSOR_KEY) is None
    assert '"chunks_deleted": 1' in done.stderr  # the step's report, logged as JSON


# ---- pdcat gc, through the API ------------------------------------------------------------------


@pytest.fixture
def cli(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``pdcat`` talking to the real router and service over ``world``, in process; the bodies it sent."""
    import httpx

    import client.cli
    from client.api import CatalogClient
    from core.api import build_router
    from core.http import Request
    from core.local.sqlite_store import SqliteApiKeyStore
    from core.rbac import Principal
    from core.service import CatalogService

    service = CatalogService(world.store, world.blobs, SqliteApiKeyStore(SqliteDatabase(tmp_path / "keys.sqlite")))
    router = build_router(service, lambda request: Principal.of("admin", ["SUPER_USER"]))
    sent: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read()
        if request.url.path.endswith("/admin/gc"):
            sent.append(json.loads(body))
        answer = router.dispatch(
            Request(request.method, request.url.raw_path.decode().split("?")[0], {}, dict(request.headers), body)
        )
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    def client_for(args: Any) -> CatalogClient:
        return CatalogClient("http://catalog.test", token="t", transport=httpx.MockTransport(handle))

    monkeypatch.setattr(client.cli, "_client", client_for)
    return sent


def test_pdcat_gc_walks_every_step_and_prints_one_line(
    world: World, cli: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from client.cli import main

    for cid in ("a1", "b2", "c3"):
        world.ready(cid, "1", ["kept"])
    world.chunk("b2", "orphan", size=3 * 1024 * 1024)
    world.chunk("c3", "orphan", size=1024 * 1024)

    assert main(["gc", "--dry-run", "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert "gc: 2 chunks (4.0 MiB) and 0 staged objects (0 B) would be reclaimed in 3 catalogs" in out
    assert world.has("b2", "orphan") and world.has("c3", "orphan")
    assert all(body["dry_run"] is True and body["grace_seconds"] == 0 for body in cli)

    cli.clear()
    assert main(["gc", "--json"]) == 0  # the catalog's own grace period: the orphans are too young
    assert json.loads(capsys.readouterr().out)["chunks_deleted"] == 0
    assert cli[0] == {"dry_run": False, "cursor": None}

    assert main(["gc", "--grace", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["chunks_deleted"] == 2 and doc["chunk_bytes_deleted"] == 4 * 1024 * 1024 and doc["catalogs"] == 3
    assert not world.has("b2", "orphan") and not world.has("c3", "orphan") and world.has("b2", "kept")


def test_pdcat_gc_follows_the_cursor(world: World, cli: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    import core.service
    from client.cli import main

    real = core.service.collect

    def one_catalog_a_step(*args: Any, **kwargs: Any) -> GcReport:
        return real(*args, **{**kwargs, "budget_seconds": 0})

    monkeypatch.setattr(core.service, "collect", one_catalog_a_step)
    for cid in ("a1", "b2", "c3"):
        world.ready(cid, "1", ["kept"])
    assert main(["gc", "-q"]) == 0
    assert [body["cursor"] is None for body in cli] == [True, False, False, False]
    assert len({body["cursor"] for body in cli}) == 4

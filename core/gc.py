"""Garbage collection: a mark-and-sweep per catalog id, safe while pushes run
(docs/adr-002-storage-protocol-v2.md, "Garbage collection and tombstones").

For each catalog id (in a fixed order: that of a hash of the id, so that a cursor reveals no id), a
step of :func:`collect`:

1. takes the catalog's lease (``gc/leases/<id>.json``); ``chunks`` and ``verify`` requests write
   their mark *before* they look at it and answer 503 while it is held (:func:`lease_active`);
2. aborts sessions older than the abandonment age (as ``CatalogService.abort`` does);
3. marks every digest that a ready version's committed index, an open session's staged index or
   one of its marks names (tombstones name nothing);
4. deletes the chunks nothing marked that are older than the grace period; removes the lease.

When every catalog id is done, the staging areas of sessions that no longer exist are removed
(every object of the session older than the grace period). Work is paged by catalog id under a time
budget: an unfinished walk answers an opaque ``next_cursor`` to resume from. A report carries counts
only, never a key or a catalog id (it must not reveal a catalog its reader cannot see).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from core.identity import ManifestKey, normalize_catalog_id
from core.manifest import Manifest, UploadSession
from core.marks import read_marks
from core.pack import is_digest
from core.ports import BlobInfo, BlobStore, ManifestStore
from core.storage_layout import (
    GC_CURSOR_KEY,
    MAX_SESSION_META_BYTES,
    STAGING_ROOT,
    chunks_prefix,
    gc_lease_key,
    index_key,
    is_nonce,
    nonce_of_staging_key,
    objects_prefix,
    staging_index_key,
    staging_meta_key,
    staging_prefix,
)
from core.wire import MAX_INDEX_BYTES

__all__ = ["GcReport", "GcSettings", "collect", "lease_active", "run_scheduled"]

log = logging.getLogger("pdcat.gc")

DELETE_BATCH = 1000  # keys per BlobStore.delete call (S3's DeleteObjects takes at most 1,000)
_MAX_LEASE_BYTES = 4096
# A cursor names the phase it resumes and where: "c:" + the walk key of the last catalog id done (a
# hash, so a cursor never reveals a catalog id), or "s:" + the last session whose staging area was
# judged ("s:" alone: the staging phase from its start).
_CATALOG_CURSOR = "c:"
_STAGING_CURSOR = "s:"
_WALK_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class GcSettings:
    grace_seconds: float = 3600
    abandon_after_seconds: float = 7 * 86400
    lease_seconds: float = 300


@dataclass
class GcReport:
    """What one step did (or, with ``dry_run``, would do). Counts only: no key, no catalog id."""

    catalogs: int = 0
    chunks_deleted: int = 0
    chunk_bytes_deleted: int = 0
    staged_deleted: int = 0
    staged_bytes_deleted: int = 0
    sessions_aborted: int = 0
    next_cursor: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- the lease --------------------------------------------------------------------------------


def _read_lease(blobs: BlobStore, key: str) -> dict[str, Any] | None:
    """The lease document, or None when there is none (or it is unreadable: only the server writes it,
    with one atomic put, so an unreadable one is junk, not a sweep in progress)."""
    try:
        doc = json.loads(blobs.get_bytes(key, max_bytes=_MAX_LEASE_BYTES))
    except (NotFound, PayloadTooLarge, ValueError, UnicodeDecodeError):
        return None
    expires = doc.get("expires") if isinstance(doc, dict) else None
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return None
    lease: dict[str, Any] = doc
    return lease


def lease_active(blobs: BlobStore, catalog_id: str, now: float | None = None) -> bool:
    """True while a sweep of ``catalog_id`` holds its lease: chunk and verify requests must wait."""
    doc = _read_lease(blobs, gc_lease_key(catalog_id))
    return doc is not None and float(doc["expires"]) > (time.time() if now is None else now)


class _Clock:
    """Wall-clock time (``now`` if given, advancing with the monotonic clock) and elapsed time."""

    def __init__(self, now: float | None) -> None:
        self._base = time.time() if now is None else now
        self._start = time.monotonic()

    def now(self) -> float:
        return self._base + self.elapsed()

    def elapsed(self) -> float:
        return time.monotonic() - self._start


class _LeaseLapsed(Exception):
    """The sweep ran past its lease: requests may have proceeded unseen, so it must not delete."""


class _Lease:
    """One catalog's lease, held by this sweep. Renewed while still valid (so it never lapses while
    deletes go on); a sweep that finds it lapsed stops deleting."""

    def __init__(self, blobs: BlobStore, catalog_id: str, seconds: float, clock: _Clock, *, dry_run: bool) -> None:
        self._dry_run = dry_run  # a dry run deletes nothing, so it takes no lease: pushes need not wait
        self._blobs = blobs
        self._key = gc_lease_key(catalog_id)
        self._seconds = seconds
        self._clock = clock
        self._owner = secrets.token_hex(8)
        self._written = 0.0
        self._margin = min(30.0, seconds / 10)  # room for clock skew between this sweep and requests

    def _doc(self, at: float) -> bytes:
        return json.dumps({"expires": at + self._seconds, "owner": self._owner}).encode()

    def acquire(self) -> bool:
        """False when another sweep holds a live lease on this catalog."""
        if self._dry_run:
            return True
        at = self._clock.now()
        if not self._blobs.put_if_absent(self._key, self._doc(at)):
            current = _read_lease(self._blobs, self._key)
            if current is not None and float(current["expires"]) > at:
                return False
            # A crashed sweep's expired (or unreadable) lease: take it over, then make sure we won.
            self._blobs.put_bytes(self._key, self._doc(at))
            current = _read_lease(self._blobs, self._key)
            if current is None or current.get("owner") != self._owner:
                return False
        self._written = at
        return True

    def keep(self) -> None:
        """Before each step that relies on the lease: renew it in time, or raise if it lapsed."""
        if self._dry_run:
            return
        at = self._clock.now()
        if at >= self._written + self._seconds - self._margin:
            raise _LeaseLapsed
        if at >= self._written + self._seconds / 3:
            self._blobs.put_bytes(self._key, self._doc(at))
            self._written = at

    def release(self) -> None:
        if self._dry_run:
            return
        current = _read_lease(self._blobs, self._key)
        if current is not None and current.get("owner") == self._owner:
            self._blobs.delete([self._key])


# ---- reading what storage references ----------------------------------------------------------


def _index_digests(data: bytes) -> set[str] | None:
    """Every chunk or object digest an index names, read leniently; None when it is not an index at all."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("index"), dict):
        doc = doc["index"]  # a protocol v1 pending upload: {"index": ..., "metadata": ...}
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    digests: set[str] = set()
    objects = doc.get("objects", [])  # index formats 2 and 3: extents name objects by position in this list
    if not isinstance(objects, list):
        return None
    for item in objects:
        digest = item.get("digest") if isinstance(item, dict) else None
        if not is_digest(digest):
            return None
        digests.add(str(digest))
    for entry in doc["files"]:
        chunks = entry.get("chunks", []) if isinstance(entry, dict) else None
        if not isinstance(chunks, list):
            return None
        for chunk in chunks:
            digest = chunk.get("digest") if isinstance(chunk, dict) else None
            if not is_digest(digest):
                return None
            digests.add(str(digest))
    return digests


def _read_index(blobs: BlobStore, key: str) -> set[str] | None:
    """The digests of the index at ``key``; None when it is missing, too large or not an index."""
    try:
        data = blobs.get_bytes(key, max_bytes=MAX_INDEX_BYTES)
    except (NotFound, PayloadTooLarge):
        return None
    return _index_digests(data)


def _started(session: UploadSession) -> float | None:
    try:
        return datetime.strptime(session.started_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return None


def _abandoned(session: UploadSession | None, cutoff: float) -> bool:
    if session is None:
        return False
    started = _started(session)
    return started is not None and started < cutoff


def _abort(store: ManifestStore, key: ManifestKey, upload_id: str) -> bool:
    """End an abandoned session as ``CatalogService.abort`` does; False if the manifest moved on."""
    stored = store.get(key)
    if stored is None or stored.manifest.upload is None or stored.manifest.upload.upload_id != upload_id:
        return False
    manifest = stored.manifest
    try:
        if manifest.is_ready or manifest.revoked or manifest.is_deleted:  # keep the version or the tombstone
            store.replace(manifest.touched(upload=None), stored.etag)
        else:
            store.delete(manifest.key, stored.etag)
    except Conflict:
        return False
    return True


# ---- one catalog --------------------------------------------------------------------------------


def _batches(items: Iterable[BlobInfo], size: int = DELETE_BATCH) -> Iterator[list[BlobInfo]]:
    batch: list[BlobInfo] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _marked(
    store: ManifestStore,
    blobs: BlobStore,
    catalog_id: str,
    lease: _Lease,
    skip_sessions: set[str],
) -> set[str] | None:
    """Every digest that something live references; None when a ready version's index cannot be read
    (then nothing may be swept: a chunk it needs could look unreferenced)."""
    marked: set[str] = set()
    for m in store.iter_all(catalog_id):
        lease.keep()
        upload = None if m.upload is None or m.upload.upload_id in skip_sessions else m.upload
        if upload is not None:
            nonce = nonce_of_staging_key(upload.index_key)
            if nonce is not None:
                marked |= read_marks(blobs, nonce).named
                marked |= _read_index(blobs, staging_index_key(nonce)) or set()
        if m.is_deleted and upload is None:
            continue  # a tombstone references nothing
        needed = m.is_ready and not m.pack.is_pdpack and not m.is_deleted
        if not needed and upload is None:
            continue
        # Read after the session's marks: a commit that ends the session between the listing and
        # the marks wrote this index before flipping the manifest, so one of the two names each chunk.
        committed = _read_index(blobs, index_key(m.key.prefix))
        if committed is None and needed:
            log.warning(
                "gc: a ready version's index is missing or unreadable; its catalog is not swept",
                extra={"manifest": str(m.key)},
            )
            return None
        marked |= committed or set()
    return marked


def _collect_catalog(
    store: ManifestStore,
    blobs: BlobStore,
    catalog_id: str,
    settings: GcSettings,
    dry_run: bool,
    clock: _Clock,
    report: GcReport,
) -> None:
    lease = _Lease(blobs, catalog_id, settings.lease_seconds, clock, dry_run=dry_run)
    if not lease.acquire():
        log.info("gc: another sweep holds this catalog's lease; skipped", extra={"catalog_id": catalog_id})
        return
    try:
        abandon_cutoff = clock.now() - settings.abandon_after_seconds
        skip: set[str] = set()  # sessions a dry run counts as aborted (and so no longer a root)
        for m in store.iter_all(catalog_id):
            if m.upload is None or not _abandoned(m.upload, abandon_cutoff):
                continue
            if dry_run:
                skip.add(m.upload.upload_id)
                report.sessions_aborted += 1
            elif _abort(store, m.key, m.upload.upload_id):
                report.sessions_aborted += 1
                log.info("gc: aborted an abandoned upload", extra={"manifest": str(m.key)})
        marked = _marked(store, blobs, catalog_id, lease, skip)
        if marked is None:
            return
        cutoff = clock.now() - settings.grace_seconds
        garbage = (
            info
            for prefix in (chunks_prefix(catalog_id), objects_prefix(catalog_id))  # index formats 1; 2 and 3
            for info in blobs.list(prefix)
            if is_digest(name := info.key[len(prefix) :])
            and name not in marked
            and info.modified is not None
            and info.modified < cutoff
        )
        for batch in _batches(garbage):
            lease.keep()
            if not dry_run:
                blobs.delete([info.key for info in batch])
            report.chunks_deleted += len(batch)
            report.chunk_bytes_deleted += sum(info.size for info in batch)
    except _LeaseLapsed:
        log.warning("gc: the sweep outran its lease; stopped deleting", extra={"catalog_id": catalog_id})
    finally:
        lease.release()


# ---- staging ----------------------------------------------------------------------------------


def _session_of_meta(store: ManifestStore, blobs: BlobStore, nonce: str) -> Manifest | None:
    """The manifest whose open upload is this session, found through the session's meta.json."""
    try:
        doc = json.loads(blobs.get_bytes(staging_meta_key(nonce), max_bytes=MAX_SESSION_META_BYTES))
    except (NotFound, PayloadTooLarge, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    parts = [doc.get(name) for name in ("catalog_id", "version", "architecture")]
    if not all(isinstance(p, str) for p in parts):
        return None
    try:
        stored = store.get(ManifestKey(str(parts[0]), str(parts[1]), str(parts[2])))
    except InvalidInput:
        return None
    if stored is None or stored.manifest.upload is None:
        return None
    return stored.manifest if stored.manifest.upload.index_key == staging_index_key(nonce) else None


def _staging_groups(blobs: BlobStore, after: str | None) -> Iterator[tuple[str, list[BlobInfo]]]:
    """Every session's objects under ``staging/``, a session at a time, in listing order."""
    nonce: str | None = None
    group: list[BlobInfo] = []
    for info in blobs.list(STAGING_ROOT):
        current = nonce_of_staging_key(info.key)
        if current is None:
            continue  # not a session's key: not ours to judge
        if after is not None and staging_prefix(current) <= staging_prefix(after):
            continue
        if current != nonce:
            if nonce is not None and group:
                yield nonce, group
            nonce, group = current, []
        group.append(info)
    if nonce is not None and group:
        yield nonce, group


def _sweep_staging(
    store: ManifestStore,
    blobs: BlobStore,
    settings: GcSettings,
    dry_run: bool,
    clock: _Clock,
    report: GcReport,
    live: set[str],
    after: str | None,
    out_of_time: Callable[[], bool],
) -> None:
    cutoff = clock.now() - settings.grace_seconds
    abandon_cutoff = clock.now() - settings.abandon_after_seconds
    pending: list[BlobInfo] = []

    def flush() -> None:
        for batch in _batches(pending):
            if not dry_run:
                blobs.delete([info.key for info in batch])
            report.staged_deleted += len(batch)
            report.staged_bytes_deleted += sum(info.size for info in batch)
        pending.clear()

    for nonce, objects in _staging_groups(blobs, after):
        young = any(info.modified is None or info.modified >= cutoff for info in objects)
        if not young and nonce not in live:
            session = (
                _session_of_meta(store, blobs, nonce)
                if any(info.key == staging_meta_key(nonce) for info in objects)
                else None
            )
            if session is None or _abandoned(session.upload, abandon_cutoff):
                pending.extend(objects)
                if len(pending) >= DELETE_BATCH:
                    flush()
        if out_of_time():
            flush()
            report.next_cursor = _STAGING_CURSOR + nonce
            return
    flush()


# ---- the walk ---------------------------------------------------------------------------------


def _walk_key(catalog_id: str) -> str:
    """Where a catalog id sits in the walk: catalogs are visited in the order of these keys."""
    return hashlib.sha256(catalog_id.encode()).hexdigest()[:32]


def _parse_cursor(cursor: str | None) -> tuple[str | None, str | None]:
    """``(walk key of the catalog done last, None)``, ``(None, session done last or "")``, or both None."""
    if cursor is None or cursor == "":
        return None, None
    if cursor.startswith(_CATALOG_CURSOR) and _WALK_KEY.fullmatch(cursor[len(_CATALOG_CURSOR) :]):
        return cursor[len(_CATALOG_CURSOR) :], None
    if cursor.startswith(_STAGING_CURSOR):
        nonce = cursor[len(_STAGING_CURSOR) :]
        if nonce == "" or is_nonce(nonce):
            return None, nonce
    raise InvalidInput("cursor must be the next_cursor of the previous gc answer")


def collect(
    store: ManifestStore,
    blobs: BlobStore,
    *,
    settings: GcSettings = GcSettings(),
    dry_run: bool = False,
    cursor: str | None = None,
    budget_seconds: float = 20.0,
    now: float | None = None,
    only: str | None = None,
) -> GcReport:
    """One step of garbage collection, resumable from ``cursor`` (the ``next_cursor`` of the previous
    step). At least one catalog id (or, after the last one, one session's staging area) is done per
    step, more while ``budget_seconds`` lasts; ``next_cursor`` is None when the walk is complete.

    ``only`` sweeps that one catalog id, whole, and nothing else (``rm --purge``). ``now`` (epoch
    seconds) stands in for the current time, for tests.
    """
    clock = _Clock(now)
    report = GcReport(dry_run=dry_run)
    if only is not None:
        _collect_catalog(store, blobs, normalize_catalog_id(only), settings, dry_run, clock, report)
        report.catalogs = 1
        return report
    done_catalog, done_nonce = _parse_cursor(cursor)
    abandon_cutoff = clock.now() - settings.abandon_after_seconds
    catalog_ids: set[str] = set()
    live: set[str] = set()  # sessions open when this step began (their staging is never collected)
    for m in store.iter_all():
        catalog_ids.add(m.catalog_id)
        if m.upload is not None and not _abandoned(m.upload, abandon_cutoff):
            nonce = nonce_of_staging_key(m.upload.index_key)
            if nonce is not None:
                live.add(nonce)

    def out_of_time() -> bool:
        return clock.elapsed() >= budget_seconds

    if done_nonce is None:  # the catalogs' phase
        walk = sorted((_walk_key(c), c) for c in catalog_ids)
        todo = [(key, c) for key, c in walk if done_catalog is None or key > done_catalog]
        for position, (key, catalog_id) in enumerate(todo):
            _collect_catalog(store, blobs, catalog_id, settings, dry_run, clock, report)
            report.catalogs += 1
            if out_of_time():
                last = position == len(todo) - 1
                report.next_cursor = _STAGING_CURSOR if last else _CATALOG_CURSOR + key
                return report
    _sweep_staging(store, blobs, settings, dry_run, clock, report, live, done_nonce or None, out_of_time)
    return report


def run_scheduled(
    store: ManifestStore,
    blobs: BlobStore,
    budget_seconds: float,
    *,
    settings: GcSettings = GcSettings(),
) -> GcReport:
    """A scheduled step (AWS schedule, Azure timer): resume from the cursor saved in storage, save the
    next one, or remove it when the walk is complete."""
    cursor: str | None = None
    try:
        doc = json.loads(blobs.get_bytes(GC_CURSOR_KEY, max_bytes=_MAX_LEASE_BYTES))
        if isinstance(doc, dict) and isinstance(doc.get("cursor"), str):
            cursor = doc["cursor"]
    except (NotFound, PayloadTooLarge, ValueError, UnicodeDecodeError):
        cursor = None
    try:
        _parse_cursor(cursor)
    except InvalidInput:  # a cursor this version cannot read: start the walk again
        cursor = None
    report = collect(store, blobs, settings=settings, cursor=cursor, budget_seconds=budget_seconds)
    if report.next_cursor is not None:
        blobs.put_bytes(GC_CURSOR_KEY, json.dumps({"cursor": report.next_cursor}).encode())
    else:
        blobs.delete([GC_CURSOR_KEY])
    log.info("gc: scheduled step", extra=report.to_json())
    return report

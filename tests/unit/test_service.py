"""The catalog service over in-memory ports (``tests/fakes/memory.py``): every use case of the storage
protocol, visibility and tombstones, in a few seconds and without a server.

The fakes pass the port contract (``tests/contract/test_ports_memory.py``), so what holds here holds
for the service over any adapter; the HTTP contract suite still runs the same rules on every backend.
A client's presigned PUT is :meth:`MemoryBlobStore.put_url`, which writes the key the URL was signed
for (and refuses a GET URL or an expired one).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import zstandard

from core.errors import Conflict, Forbidden, Gone, InvalidInput, NotFound, PdcatError, Tainted, Unavailable
from core.identity import ManifestKey
from core.manifest import Manifest
from core.pack import Chunk, FileEntry, PackIndex
from core.pdpack_meta import PackMeta, meta_key, pack_key
from core.rbac import ALL_CLAIMS, Claim, Principal
from core.service import CatalogService
from core.storage_layout import chunk_key, gc_lease_key, index_key, quarantine_key, staging_prefix
from tests.fakes.memory import MemoryApiKeyStore, MemoryBlobStore, MemoryManifestStore

CELL = 4096  # the smallest chunk size: a pack of a few cells is a few KiB

ADMIN = Principal.of("alice-admin", ["ADMIN"])
ALICE = Principal.of("alice", ["PUBLISHER"])
BOB = Principal.of("bob", ["PUBLISHER"])
URSULA = Principal.of("ursula", ["USER"])
ROOT = Principal.of("root", ["SUPER_USER"])


# ---- a pack, and a client that follows the protocol ---------------------------------------------


@dataclass(frozen=True)
class Pack:
    index: PackIndex
    chunks: dict[str, bytes]  # digest -> compressed bytes, as a client uploads them
    raw: dict[str, bytes]

    @property
    def digests(self) -> list[str]:
        return list(self.index.unique_digests())

    @property
    def index_bytes(self) -> bytes:
        return self.index.canonical_bytes()


def make_pack(*cells: str) -> Pack:
    """One file of ``len(cells)`` grid cells; each cell is its name repeated (same name, same chunk)."""
    compress = zstandard.ZstdCompressor(level=1).compress
    raw = {name: (name.encode() * CELL)[:CELL] for name in cells}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in raw.items()}
    chunks = tuple(Chunk(i * CELL, CELL, digests[name]) for i, name in enumerate(cells))
    index = PackIndex(CELL, (FileEntry("disk.img", size=CELL * len(cells), chunks=chunks),))
    return Pack(
        index,
        {digests[n]: compress(raw[n]) for n in cells},
        {digests[n]: raw[n] for n in cells},
    )


class Catalog:
    """The service over fresh in-memory ports, and a client that drives it as ``pdcat`` does."""

    def __init__(self) -> None:
        self.store = MemoryManifestStore()
        self.blobs = MemoryBlobStore()
        self.keys = MemoryApiKeyStore()
        self.service = CatalogService(self.store, self.blobs, self.keys)

    def begin(self, who: Principal, key: ManifestKey, pack: Pack, **body: Any) -> str:
        answer = self.service.push_begin(who, key, {"chunk_size": CELL, **body})
        self.put_index(who, answer["upload_id"], pack.index_bytes)
        return answer["upload_id"]

    def put_index(self, who: Principal, upload_id: str, data: bytes) -> str:
        """Declare ``data`` as the session's index and PUT it; the storage key it landed at."""
        declared = {"index_digest": hashlib.sha256(data).hexdigest(), "index_size": len(data)}
        return self.blobs.put_url(self.service.declare_index(who, upload_id, declared)["index_url"], data)

    def upload(self, who: Principal, upload_id: str, pack: Pack, only: list[str] | None = None) -> dict[str, Any]:
        """Ask which chunks are stored, PUT the others to their staging URLs, verify them."""
        wanted = only if only is not None else pack.digests
        answer = self.service.upload_chunks(who, upload_id, wanted)
        for digest, url in answer["urls"].items():
            self.blobs.put_url(url, pack.chunks[digest])
        verdict = self.service.verify_chunks(who, upload_id, list(answer["urls"])) if answer["urls"] else None
        return {"stored": answer["stored"], "sent": list(answer["urls"]), "verdict": verdict}

    def push(self, who: Principal, key: ManifestKey, pack: Pack, **body: Any) -> Manifest:
        upload_id = self.begin(who, key, pack, **body)
        self.upload(who, upload_id, pack)
        return self.service.commit(who, upload_id, {})

    def pull_bytes(self, who: Principal, key: ManifestKey, version: str | None = None) -> dict[str, bytes]:
        """Pull as a client: the index through its URL, every chunk through its URL, decompressed."""
        answer = self.service.pull(who, key.catalog_id, version or key.version, key.architecture)
        assert answer["format"] == "chunks"
        index = PackIndex.from_bytes(self.blobs.get_url(answer["index_url"]))
        assert index.digest == answer["manifest"]["pack"]["digest"]
        digests = list(index.unique_digests())
        urls = self.service.pull_urls(who, key, digests)["urls"]
        decompress = zstandard.ZstdDecompressor().decompress
        return {d: decompress(self.blobs.get_url(urls[d])) for d in digests}

    def has_chunk(self, catalog_id: str, digest: str) -> bool:
        return self.blobs.head(chunk_key(catalog_id, digest)) is not None


def _nonce(cat: Catalog, key: ManifestKey) -> str:
    """The staging nonce of the session open on ``key``."""
    stored = cat.store.get(key)
    assert stored is not None and stored.manifest.upload is not None
    return stored.manifest.upload.index_key.split("/")[1]


@pytest.fixture
def cat() -> Catalog:
    return Catalog()


K1 = ManifestKey("ubuntu", "1.0", "arm64")
K2 = ManifestKey("ubuntu", "2.0", "arm64")


# ---- push and pull ------------------------------------------------------------------------------


def test_push_then_pull_gives_back_every_byte(cat: Catalog) -> None:
    pack = make_pack("a", "b", "a", "c")
    manifest = cat.push(ALICE, K1, pack, description="first", tags=["lts"])
    assert manifest.is_ready and manifest.upload is None and manifest.description == "first"
    # the committed index is the declared one plus the stored sizes; its digest is the pack digest
    committed = cat.blobs.get_bytes(index_key(K1.prefix))
    assert manifest.pack.digest == hashlib.sha256(committed).hexdigest() and manifest.pack.chunk_count == 3
    index = PackIndex.from_bytes(committed)
    assert [c.digest for c in index.chunks()] == [c.digest for c in pack.index.chunks()]
    assert {c.stored_size for c in index.chunks()} == {len(b) for b in pack.chunks.values()}
    assert cat.pull_bytes(URSULA, K1) == pack.raw
    stored = cat.store.get(K1)
    assert stored is not None and stored.manifest.download_count == 1
    assert stored.manifest.last_downloaded_by == "ursula"


def test_a_second_version_uploads_only_what_changed(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a", "b"))
    upload_id = cat.begin(ALICE, K2, make_pack("a", "b", "c"))
    sent = cat.upload(ALICE, upload_id, make_pack("a", "b", "c"))
    assert len(sent["stored"]) == 2 and len(sent["sent"]) == 1
    cat.service.commit(ALICE, upload_id, {})
    assert cat.pull_bytes(URSULA, K2) == make_pack("a", "b", "c").raw


def test_commit_is_refused_until_every_chunk_is_verified(cat: Catalog) -> None:
    pack = make_pack("a", "b")
    upload_id = cat.begin(ALICE, K1, pack)
    cat.upload(ALICE, upload_id, pack, only=pack.digests[:1])
    with pytest.raises(Conflict, match="not verified yet"):
        cat.service.commit(ALICE, upload_id, {})
    cat.upload(ALICE, upload_id, pack, only=pack.digests[1:])
    assert cat.service.commit(ALICE, upload_id, {}).is_ready


def test_a_corrupt_staged_chunk_never_enters_chunks(cat: Catalog) -> None:
    pack = make_pack("a")
    (digest,) = pack.digests
    upload_id = cat.begin(ALICE, K1, pack)
    urls = cat.service.upload_chunks(ALICE, upload_id, [digest])["urls"]
    cat.blobs.put_url(urls[digest], zstandard.ZstdCompressor().compress(b"not the chunk"))
    assert cat.service.verify_chunks(ALICE, upload_id, [digest]) == {"verified": [], "missing": [], "corrupt": [digest]}
    assert not cat.has_chunk("ubuntu", digest)
    assert cat.service.verify_chunks(ALICE, upload_id, [digest])["missing"] == [digest]  # the staged copy is gone
    with pytest.raises(Conflict):
        cat.service.commit(ALICE, upload_id, {})


def test_the_uploaded_index_must_be_the_declared_one(cat: Catalog) -> None:
    pack = make_pack("a")
    answer = cat.service.push_begin(ALICE, K1, {"chunk_size": CELL})
    with pytest.raises(Conflict, match="declare the index"):
        cat.service.commit(ALICE, answer["upload_id"], {})
    declared = {"index_digest": pack.index.digest, "index_size": len(pack.index_bytes)}
    cat.service.declare_index(ALICE, answer["upload_id"], declared)
    with pytest.raises(Conflict, match="not been uploaded"):
        cat.service.commit(ALICE, answer["upload_id"], {})
    index_url = cat.service.declare_index(ALICE, answer["upload_id"], declared)["index_url"]
    cat.blobs.put_url(index_url, make_pack("b").index_bytes)
    cat.upload(ALICE, answer["upload_id"], pack)
    with pytest.raises(Conflict, match="does not match the declared"):
        cat.service.commit(ALICE, answer["upload_id"], {})


def test_the_index_url_is_a_put_into_the_sessions_staging_area_only(cat: Catalog) -> None:
    pack = make_pack("a")
    answer = cat.service.push_begin(ALICE, K1, {"chunk_size": CELL})
    declared = {"index_digest": pack.index.digest, "index_size": len(pack.index_bytes)}
    index_url = cat.service.declare_index(ALICE, answer["upload_id"], declared)["index_url"]
    key = cat.blobs.put_url(index_url, pack.index_bytes)
    assert key.startswith("staging/") and key.endswith("/index.json")
    with pytest.raises(Forbidden):
        cat.blobs.get_url(index_url)
    urls = cat.service.upload_chunks(ALICE, answer["upload_id"], pack.digests)["urls"]
    assert all(cat.blobs.put_url(url, b"x").startswith(key.removesuffix("index.json")) for url in urls.values())


# ---- resume and takeover --------------------------------------------------------------------------


def test_the_pusher_resumes_and_sends_only_what_storage_lacks(cat: Catalog) -> None:
    pack = make_pack("a", "b", "c")
    first = cat.begin(ALICE, K1, pack)
    cat.upload(ALICE, first, pack, only=pack.digests[:2])
    second = cat.begin(ALICE, K1, pack)  # a killed push, run again: no force needed for one's own
    assert second != first
    with pytest.raises(NotFound):
        cat.service.upload_chunks(ALICE, first, pack.digests)  # the old session is gone
    sent = cat.upload(ALICE, second, pack)
    assert sorted(sent["stored"]) == sorted(pack.digests[:2]) and sent["sent"] == pack.digests[2:]
    assert cat.service.commit(ALICE, second, {}).is_ready


def test_taking_over_someone_elses_push_must_be_explicit(cat: Catalog) -> None:
    pack = make_pack("a", "b")
    alices = cat.begin(ALICE, K1, pack)
    with pytest.raises(Conflict, match="push with force to take over"):
        cat.begin(BOB, K1, pack)
    for use in (
        lambda: cat.service.upload_chunks(BOB, alices, pack.digests),
        lambda: cat.service.verify_chunks(BOB, alices, pack.digests),
        lambda: cat.service.commit(BOB, alices, {}),
        lambda: cat.service.abort(BOB, alices),
    ):
        with pytest.raises(NotFound):  # a session belongs to whoever began it
            use()
    bobs = cat.begin(BOB, K1, pack, force=True)
    with pytest.raises(NotFound):
        cat.service.commit(ALICE, alices, {})  # replaced by a newer push
    cat.upload(BOB, bobs, pack)
    manifest = cat.service.commit(BOB, bobs, {})
    assert manifest.upload is None and manifest.created_by == "alice"  # the session moved, not the record


def test_a_ready_version_is_replaced_only_with_force_and_stays_pullable_meanwhile(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    with pytest.raises(Conflict, match="already exists"):
        cat.begin(ALICE, K1, make_pack("b"))
    upload_id = cat.begin(ALICE, K1, make_pack("b"), force=True)
    assert cat.pull_bytes(URSULA, K1) == make_pack("a").raw
    cat.upload(ALICE, upload_id, make_pack("b"))
    cat.service.commit(ALICE, upload_id, {})
    assert cat.pull_bytes(URSULA, K1) == make_pack("b").raw


# ---- latest ---------------------------------------------------------------------------------------


def test_latest_is_the_newest_usable_version_per_architecture(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    cat.push(ALICE, K2, make_pack("b"))
    cat.push(ALICE, ManifestKey("ubuntu", "1.5", "x86_64"), make_pack("c"))
    assert cat.service.get(URSULA, "ubuntu", "latest", "arm64").version == "2.0"
    assert [(m.version, m.architecture) for m in cat.service.versions(URSULA, "ubuntu", "latest")] == [
        ("2.0", "arm64"),
        ("1.5", "x86_64"),
    ]
    cat.service.taint(ADMIN, K2)
    assert cat.service.get(URSULA, "ubuntu", "latest", "arm64").version == "1.0"
    assert cat.pull_bytes(URSULA, K1, version="latest") == make_pack("a").raw
    with pytest.raises(Tainted):
        cat.service.pull(URSULA, "ubuntu", "2.0", "arm64")
    cat.service.revoke(ADMIN, K1)
    with pytest.raises(NotFound, match="no usable version"):
        cat.service.pull(URSULA, "ubuntu", "latest", "arm64")
    cat.service.untaint(ADMIN, K2)
    assert cat.service.get(URSULA, "ubuntu", "LATEST", "arm64").version == "2.0"


def test_latest_skips_what_the_caller_cannot_see_and_uploads_in_progress(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    cat.push(ADMIN, K2, make_pack("b"), required_roles=["ADMIN"])
    cat.begin(ALICE, ManifestKey("ubuntu", "3.0", "arm64"), make_pack("c"))
    assert cat.service.get(URSULA, "ubuntu", "latest", "arm64").version == "1.0"
    assert cat.service.get(ADMIN, "ubuntu", "latest", "arm64").version == "2.0"


# ---- revoke, abort ----------------------------------------------------------------------------------


def test_revoke_then_abort_keeps_the_identity_burned(cat: Catalog) -> None:
    pack = make_pack("a")
    upload_id = cat.begin(ALICE, K1, pack)  # a first push, still uploading
    cat.service.revoke(ADMIN, K1)
    cat.service.abort(ALICE, upload_id)
    stored = cat.store.get(K1)
    assert stored is not None and stored.manifest.revoked and stored.manifest.upload is None
    with pytest.raises(Gone):
        cat.begin(ALICE, K1, pack, force=True)
    with pytest.raises(Gone):
        cat.service.revoke(ADMIN, K1)


def test_abort_of_a_first_push_removes_it_and_of_a_replacement_keeps_the_version(cat: Catalog) -> None:
    upload_id = cat.begin(ALICE, K1, make_pack("a"))
    cat.service.abort(ALICE, upload_id)
    assert cat.store.get(K1) is None
    cat.push(ALICE, K1, make_pack("a"))
    upload_id = cat.begin(ALICE, K1, make_pack("b"), force=True)
    cat.service.abort(ALICE, upload_id)
    stored = cat.store.get(K1)
    assert stored is not None and stored.manifest.is_ready and stored.manifest.upload is None
    assert cat.pull_bytes(URSULA, K1) == make_pack("a").raw


# ---- hidden identities: decoys --------------------------------------------------------------------


def test_a_push_to_a_hidden_identity_gets_a_decoy_that_never_commits(cat: Catalog) -> None:
    secret = make_pack("s1", "s2")
    cat.push(ADMIN, K1, secret, required_roles=["ADMIN"])
    before = cat.store.get(K1)
    upload_id = cat.begin(ALICE, K1, secret)  # answered as for a free identity
    sent = cat.upload(ALICE, upload_id, secret)
    assert sent["stored"] == []  # no dedup answer: the hidden version's chunks are not probed
    assert sent["verdict"]["verified"] == secret.digests
    with pytest.raises(Conflict, match="changed while committing"):  # as a lost race
        cat.service.commit(ALICE, upload_id, {})
    assert cat.store.get(K1) == before
    for use in (
        lambda: cat.service.upload_chunks(BOB, upload_id, secret.digests),
        lambda: cat.service.abort(BOB, upload_id),
    ):
        with pytest.raises(NotFound):  # the decoy is its owner's only
            use()
    cat.service.abort(ALICE, upload_id)
    with pytest.raises(NotFound):
        cat.service.upload_chunks(ALICE, upload_id, secret.digests)
    assert cat.store.get(K1) == before


def test_dedup_is_answered_only_to_who_sees_every_version_of_the_catalog_id(cat: Catalog) -> None:
    cat.push(ADMIN, K1, make_pack("shared"), required_roles=["ADMIN"])
    upload_id = cat.begin(ALICE, K2, make_pack("shared"))
    sent = cat.upload(ALICE, upload_id, make_pack("shared"))
    assert sent["stored"] == [] and sent["sent"] == make_pack("shared").digests
    assert cat.service.commit(ALICE, upload_id, {}).is_ready


def test_reads_of_a_hidden_version_answer_as_for_a_missing_one(cat: Catalog) -> None:
    cat.push(ADMIN, K1, make_pack("a"), required_roles=["ADMIN"])
    for read in (
        lambda: cat.service.get(URSULA, "ubuntu", "1.0", "arm64"),
        lambda: cat.service.versions(URSULA, "ubuntu"),
        lambda: cat.service.pull(URSULA, "ubuntu", "1.0", "arm64"),
        lambda: cat.service.pull_urls(URSULA, K1, make_pack("a").digests),
        lambda: cat.service.taint(Principal.of("t", claims=[Claim.TAINT]), K1),
        lambda: cat.service.delete(Principal.of("d", claims=[Claim.DELETE]), "ubuntu"),
    ):
        with pytest.raises(NotFound):
            read()
    assert cat.service.list_manifests(URSULA) == ([], None)


def test_list_pages_skip_hidden_manifests_and_end_without_an_empty_page(cat: Catalog) -> None:
    for i in range(5):
        roles = ["ADMIN"] if i % 2 else []
        cat.push(ADMIN, ManifestKey("c", f"{i}.0", "arm64"), make_pack(f"x{i}"), required_roles=roles)
    page, cursor = cat.service.list_manifests(URSULA, limit=2)
    assert [m.version for m in page] == ["0.0", "2.0"] and cursor is not None
    page, cursor = cat.service.list_manifests(URSULA, limit=2, cursor=cursor)
    assert [m.version for m in page] == ["4.0"] and cursor is None
    with pytest.raises(InvalidInput):
        cat.service.list_manifests(URSULA, cursor="not-a-cursor")


def test_an_import_over_a_hidden_identity_sees_nothing(cat: Catalog) -> None:
    cat.push(ADMIN, K1, make_pack("a"), required_roles=["ADMIN"])
    with pytest.raises(NotFound, match="no pack index"):
        cat.service.import_pack(ALICE, {"catalog_id": "ubuntu", "version": "1.0", "architecture": "arm64"})


# ---- tombstones ---------------------------------------------------------------------------------------


def test_delete_leaves_an_invisible_tombstone_that_keeps_the_access_rules(cat: Catalog) -> None:
    cat.push(ADMIN, K1, make_pack("a"), required_roles=["ADMIN"])
    cat.push(ALICE, K2, make_pack("b"))
    (deleted,) = cat.service.delete(ADMIN, "ubuntu", "1.0", "arm64")
    assert deleted.is_ready
    stored = cat.store.get(K1)
    assert stored is not None and stored.manifest.is_deleted and stored.manifest.required_roles == ["ADMIN"]
    with pytest.raises(NotFound):
        cat.service.get(ADMIN, "ubuntu", "1.0", "arm64")
    assert [m.version for m in cat.service.versions(ROOT, "ubuntu")] == ["2.0"]
    with pytest.raises(NotFound):
        cat.service.delete(ADMIN, "ubuntu", "1.0")  # already gone
    # someone who could not see it cannot take the identity: a decoy
    upload_id = cat.begin(ALICE, K1, make_pack("c"))
    cat.upload(ALICE, upload_id, make_pack("c"))
    with pytest.raises(Conflict):
        cat.service.commit(ALICE, upload_id, {})
    # someone who can see it pushes a fresh version there, keeping the roles
    manifest = cat.push(ADMIN, K1, make_pack("c"))
    assert manifest.is_ready and manifest.required_roles == ["ADMIN"] and manifest.download_count == 0
    assert cat.pull_bytes(ADMIN, K1) == make_pack("c").raw


def test_an_aborted_push_over_a_tombstone_leaves_the_tombstone(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    cat.service.delete(ADMIN, "ubuntu", "1.0", "arm64")
    upload_id = cat.begin(ALICE, K1, make_pack("b"))
    with pytest.raises(NotFound):
        cat.service.get(ALICE, "ubuntu", "1.0", "arm64")  # still a tombstone while the push runs
    cat.service.abort(ALICE, upload_id)
    stored = cat.store.get(K1)
    assert stored is not None and stored.manifest.is_deleted and stored.manifest.upload is None


def test_a_revoked_tombstone_cannot_be_pushed_or_imported_again(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    cat.service.revoke(ADMIN, K1)
    cat.service.delete(ADMIN, "ubuntu")
    with pytest.raises(Gone):
        cat.begin(ALICE, K1, make_pack("b"), force=True)
    with pytest.raises(Gone):
        cat.service.import_pack(ALICE, {"catalog_id": "ubuntu", "version": "1.0", "architecture": "arm64"})


def test_a_version_deleted_without_purge_can_be_imported_back(cat: Catalog) -> None:
    pack = make_pack("a", "b")
    cat.push(ALICE, K1, pack, tags=["old"])
    cat.service.delete(ADMIN, "ubuntu")
    body = {"catalog_id": "ubuntu", "version": "1.0", "architecture": "arm64", "tags": ["back"]}
    manifest = cat.service.import_pack(ALICE, body)
    assert manifest.is_ready and manifest.tags == ["back"] and manifest.pack.chunk_count == 2
    assert cat.pull_bytes(URSULA, K1) == pack.raw
    with pytest.raises(Conflict, match="already exists"):
        cat.service.import_pack(ALICE, body)


# ---- purge and garbage collection -----------------------------------------------------------------


def test_purge_reclaims_what_no_other_version_references(cat: Catalog) -> None:
    one, two = make_pack("a", "b"), make_pack("b", "c")
    cat.push(ALICE, K1, one)
    cat.push(ALICE, K2, two)
    a, b = one.digests
    c = two.digests[1]
    cat.service.delete(ADMIN, "ubuntu", "1.0", purge=True)
    assert not cat.has_chunk("ubuntu", a) and cat.has_chunk("ubuntu", b) and cat.has_chunk("ubuntu", c)
    assert cat.blobs.keys(index_key(K1.prefix)) == []
    assert cat.pull_bytes(URSULA, K2) == two.raw


def test_gc_keeps_every_referenced_chunk_and_those_of_open_sessions(cat: Catalog) -> None:
    cat.push(ALICE, K1, make_pack("a"))
    orphan = make_pack("orphan")
    cat.blobs.put_bytes(chunk_key("ubuntu", orphan.digests[0]), orphan.chunks[orphan.digests[0]])
    pending = make_pack("a", "pending")
    upload_id = cat.begin(BOB, K2, pending)
    cat.upload(BOB, upload_id, pending)  # verified, named by the session's marks, not committed
    young = cat.service.collect_garbage(ADMIN, {})
    assert young["chunks_deleted"] == 0  # everything is inside the grace period
    dry = cat.service.collect_garbage(ADMIN, {"grace_seconds": 0, "dry_run": True})
    assert dry["chunks_deleted"] == 1 and cat.has_chunk("ubuntu", orphan.digests[0])
    report = cat.service.collect_garbage(ADMIN, {"grace_seconds": 0})
    assert report["chunks_deleted"] == 1 and report["next_cursor"] is None
    assert not cat.has_chunk("ubuntu", orphan.digests[0])
    assert all(cat.has_chunk("ubuntu", d) for d in pending.digests)
    assert cat.service.commit(BOB, upload_id, {}).is_ready
    assert cat.pull_bytes(URSULA, K2) == pending.raw


def test_gc_collects_the_staging_area_of_an_aborted_session(cat: Catalog) -> None:
    cat.push(ALICE, K2, make_pack("kept"))
    pack = make_pack("a")
    upload_id = cat.begin(ALICE, K1, pack)
    cat.upload(ALICE, upload_id, pack)
    nonce_keys = [k for k in cat.blobs.keys("staging/") if k.startswith(staging_prefix(_nonce(cat, K1)))]
    cat.service.abort(ALICE, upload_id)
    cat.blobs.age(7200)  # older than the default grace period of an hour
    report = cat.service.collect_garbage(ADMIN, {})
    assert nonce_keys and report["staged_deleted"] >= len(nonce_keys)
    assert not any(cat.blobs.keys(k) for k in nonce_keys)
    assert report["chunks_deleted"] == 1 and not cat.has_chunk("ubuntu", pack.digests[0])
    assert cat.pull_bytes(URSULA, K2) == make_pack("kept").raw


def test_chunks_and_verify_wait_while_a_sweep_holds_the_lease_but_name_their_digests_first(cat: Catalog) -> None:
    pack = make_pack("a")
    upload_id = cat.begin(ALICE, K1, pack)
    cat.blobs.put_bytes(gc_lease_key("ubuntu"), json.dumps({"expires": time.time() + 60}).encode())
    marks_before = len(cat.blobs.keys("staging/"))
    with pytest.raises(Unavailable):
        cat.service.upload_chunks(ALICE, upload_id, pack.digests)
    with pytest.raises(Unavailable):
        cat.service.verify_chunks(ALICE, upload_id, pack.digests)
    assert len(cat.blobs.keys("staging/")) == marks_before + 2  # an intent mark each, before the lease
    cat.blobs.delete([gc_lease_key("ubuntu")])
    cat.upload(ALICE, upload_id, pack)
    assert cat.service.commit(ALICE, upload_id, {}).is_ready


# ---- a puller's report ------------------------------------------------------------------------------


def test_a_reported_chunk_is_quarantined_only_if_it_really_is_corrupt(cat: Catalog) -> None:
    pack = make_pack("a", "b")
    cat.push(ALICE, K1, pack)
    bad, good = pack.digests
    cat.blobs.put_bytes(chunk_key("ubuntu", bad), b"rotten")
    answer = cat.service.report_corrupt(URSULA, K1, [bad, good])
    assert answer == {"quarantined": [bad], "intact": [good]}
    assert cat.blobs.get_bytes(quarantine_key("ubuntu", bad)) == b"rotten" and not cat.has_chunk("ubuntu", bad)
    with pytest.raises(InvalidInput, match="not part of this version"):
        cat.service.report_corrupt(URSULA, K1, [make_pack("zz").digests[0]])
    # the next push uploads it again
    upload_id = cat.begin(ALICE, K2, pack)
    assert cat.upload(ALICE, upload_id, pack)["sent"] == [bad]


# ---- the original format: import and pull ------------------------------------------------------------


def test_an_original_pack_is_imported_in_place_and_pulled_through_one_url(cat: Catalog) -> None:
    pack = b"\x1f\x8b pretend gzip"
    name_key = pack_key("legacy", "arm64", "1.0")
    meta = PackMeta(
        catalog_id="legacy",
        version="1.0",
        architecture="arm64",
        vm_type="pvm",
        pack_path=name_key.split("/", 1)[1],
        pack_size=len(pack),
        size=1000,
        is_compressed=True,
        checksum=hashlib.md5(pack).hexdigest(),
        tags=("lts",),
    )
    cat.blobs.put_bytes(name_key, pack)
    cat.blobs.put_bytes(meta_key("legacy", "arm64", "1.0"), meta.to_json())
    body = {"catalog_id": "legacy", "version": "1.0", "architecture": "arm64", "format": "pdpack"}
    manifest = cat.service.import_pack(ALICE, body)
    assert manifest.pack.is_pdpack and manifest.pack.key == name_key and manifest.stored_size == len(pack)
    assert manifest.tags == ["lts"]
    answer = cat.service.pull(URSULA, "legacy", "1.0", "arm64")
    assert answer["format"] == "pdpack" and answer["pack"]["checksum_algorithm"] == "md5"
    assert cat.blobs.get_url(answer["pack"]["url"]) == pack
    key = ManifestKey("legacy", "1.0", "arm64")
    assert cat.blobs.get_url(cat.service.pull_urls(URSULA, key, None)["pack"]["url"]) == pack
    with pytest.raises(InvalidInput):
        cat.service.pull_urls(URSULA, key, [make_pack("a").digests[0]])
    cat.service.delete(ADMIN, "legacy", purge=True)
    assert cat.blobs.keys("legacy/") == []


def test_an_original_pack_whose_meta_names_another_version_is_refused(cat: Catalog) -> None:
    meta = PackMeta(catalog_id="legacy", version="9.9", architecture="arm64", checksum="0" * 32)
    cat.blobs.put_bytes(meta_key("legacy", "arm64", "1.0"), meta.to_json())
    body = {"catalog_id": "legacy", "version": "1.0", "architecture": "arm64", "format": "pdpack"}
    with pytest.raises(PdcatError) as refused:
        cat.service.import_pack(ALICE, body)
    assert refused.value.status == 422


# ---- API keys -------------------------------------------------------------------------------------------


def test_an_api_key_never_carries_more_than_its_creator(cat: Catalog) -> None:
    with pytest.raises(Forbidden, match="cannot carry more"):
        cat.service.create_api_key(Principal.of("p", ["PUBLISHER"], [Claim.MANAGE_API_KEYS]), {"roles": ["ADMIN"]})
    record, secret = cat.service.create_api_key(ADMIN, {"roles": ["USER"], "description": "ci"})
    assert record.subject == "alice-admin" and record.roles == ["USER"] and secret
    assert secret not in json.dumps(record.to_public()) and record.secret_hash not in secret
    granted, _ = cat.service.create_api_key(ROOT, {"roles": ["SUPER_USER"]})
    assert granted.roles == ["SUPER_USER"]


def test_an_api_key_acts_as_its_creator_or_the_creators_service_account(cat: Catalog) -> None:
    record, _ = cat.service.create_api_key(ADMIN, {"service_account": "builder", "expires_in_days": 7.0})
    assert record.subject == "svc:alice-admin/builder"
    for body in ({"subject": "bob"}, {"service_account": "../x"}, {"service_account": ""}, {"nope": 1}):
        with pytest.raises(InvalidInput):
            cat.service.create_api_key(ADMIN, body)
    for days in (0, 367, "30", True):
        with pytest.raises(InvalidInput, match="expires_in_days"):
            cat.service.create_api_key(ADMIN, {"expires_in_days": days})


def test_api_keys_are_listed_by_age_and_revoked_once(cat: Catalog) -> None:
    first, _ = cat.service.create_api_key(ADMIN, {})
    second, _ = cat.service.create_api_key(ADMIN, {})
    assert [r.key_id for r in cat.service.list_api_keys(ADMIN)] == [first.key_id, second.key_id]
    revoked = cat.service.revoke_api_key(ADMIN, first.key_id)
    assert revoked.revoked and revoked.revoked_by == "alice-admin"
    assert cat.service.revoke_api_key(ROOT, first.key_id) == revoked  # who and when stay the first's
    with pytest.raises(NotFound):
        cat.service.revoke_api_key(ADMIN, "no-such-key")


# ---- the service's own claim checks (the router checks first; these are the second line) ----------


_UPLOAD = "eyJ4Ijoi"  # any text: the claim is checked before the upload id is read
_USE_CASES: list[tuple[Claim, Callable[[CatalogService, Principal], object]]] = [
    (Claim.LIST, lambda s, w: s.list_manifests(w)),
    (Claim.LIST, lambda s, w: s.versions(w, "ubuntu")),
    (Claim.LIST, lambda s, w: s.get(w, "ubuntu", "1.0", "arm64")),
    (Claim.TAINT, lambda s, w: s.taint(w, K1)),
    (Claim.TAINT, lambda s, w: s.untaint(w, K1)),
    (Claim.REVOKE, lambda s, w: s.revoke(w, K1)),
    (Claim.UPDATE, lambda s, w: s.edit_list(w, K1, "tags", ["x"], True)),
    (Claim.UPDATE, lambda s, w: s.update_metadata(w, K1, {"description": "x"})),
    (Claim.DELETE, lambda s, w: s.delete(w, "ubuntu")),
    (Claim.DELETE, lambda s, w: s.collect_garbage(w, {})),
    (Claim.PUSH, lambda s, w: s.push_begin(w, K1, {})),
    (Claim.PUSH, lambda s, w: s.upload_chunks(w, _UPLOAD, [])),
    (Claim.PUSH, lambda s, w: s.verify_chunks(w, _UPLOAD, [])),
    (Claim.PUSH, lambda s, w: s.commit(w, _UPLOAD, {})),
    (Claim.PUSH, lambda s, w: s.abort(w, _UPLOAD)),
    (Claim.PULL, lambda s, w: s.pull(w, "ubuntu", "1.0", "arm64")),
    (Claim.PULL, lambda s, w: s.pull_urls(w, K1, [])),
    (Claim.PULL, lambda s, w: s.report_corrupt(w, K1, [])),
    (Claim.IMPORT, lambda s, w: s.import_pack(w, {})),
    (Claim.MANAGE_API_KEYS, lambda s, w: s.create_api_key(w, {})),
    (Claim.MANAGE_API_KEYS, lambda s, w: s.list_api_keys(w)),
    (Claim.MANAGE_API_KEYS, lambda s, w: s.revoke_api_key(w, "k")),
]


@pytest.mark.parametrize(
    ("claim", "use_case"), _USE_CASES, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(_USE_CASES)]
)
def test_every_use_case_checks_its_claim_itself(
    cat: Catalog, claim: Claim, use_case: Callable[[CatalogService, Principal], object]
) -> None:
    lacking = Principal.of("mallory", claims=sorted(ALL_CLAIMS - {claim.value}))
    with pytest.raises(Forbidden, match=claim.value):
        use_case(cat.service, lacking)
    try:
        use_case(cat.service, Principal.of("carol", claims=[claim.value]))
    except Forbidden:
        pytest.fail(f"{claim.value} alone should pass the claim check")
    except PdcatError:
        pass  # past the claim: 400/404/409 on this empty catalog

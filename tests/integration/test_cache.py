"""client.cache: the eviction plan as properties, and the cache itself on a real folder: bundle
entries (what a pull to a copy-on-write destination keeps) and chunks entries (compressed chunk
objects, what a pull anywhere else keeps), their space accounting, eviction, reservations and sweep.

Bundles here are small VM-like folders indexed with ``client.packer.build_index`` on a 64 KiB grid,
so versions share most of their chunks the way real VM versions do. Their files get an mtime an hour
in the past: a modification made by a test then always moves the mtime, whatever the clock's tick.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.cache import (
    BUNDLE,
    CHUNKS,
    DEFAULT_KEEP_FREE_BYTES,
    Budget,
    CacheEntry,
    LocalChunks,
    VmCache,
    budget_from_env,
    cache_dir,
    plan_eviction,
)
from client.clone import clone_tree
from client.direct_io import O_DIRECT
from client.packer import build_index, compress, decompress, read_cell
from core.errors import Conflict, InvalidInput, NotFound
from core.pack import DIR, FileEntry, PackIndex

KiB = 1024
CHUNK = 64 * KiB
CID = "ubuntu-dev"


# ---- plan_eviction, pure ----------------------------------------------------------------------
@st.composite
def cache_entries(draw: st.DrawFn) -> list[CacheEntry]:
    n = draw(st.integers(0, 12))
    return [
        CacheEntry(
            digest=f"{i:064x}",
            catalog_id="vm",
            version=str(i),
            architecture="arm64",
            size=0,
            disk_usage=draw(st.integers(0, 1000)),
            created_at=float(draw(st.integers(0, 5))),  # few values: ties on every key happen
            last_used=float(draw(st.integers(0, 5))),
            use_count=draw(st.integers(0, 3)),
            pinned=draw(st.booleans()),
        )
        for i in range(n)
    ]


budgets = st.builds(
    Budget, max_bytes=st.none() | st.integers(0, 6000), keep_free_bytes=st.none() | st.integers(0, 6000)
)
free_space = st.integers(0, 6000)
incoming_bytes = st.integers(0, 1500)


def _meets(entries: list[CacheEntry], evicted: list[CacheEntry], budget: Budget, free: int, incoming: int) -> bool:
    freed = sum(e.disk_usage for e in evicted)
    kept = sum(e.disk_usage for e in entries) - freed
    if budget.max_bytes is not None and kept + incoming > budget.max_bytes:
        return False
    return budget.keep_free_bytes is None or free + freed - incoming >= budget.keep_free_bytes


def _age(e: CacheEntry) -> tuple[float, int, float]:
    return e.last_used, e.use_count, e.created_at


@given(cache_entries(), budgets, free_space, incoming_bytes)
def test_pinned_entries_are_never_evicted(entries: list[CacheEntry], budget: Budget, free: int, incoming: int) -> None:
    victims = plan_eviction(entries, budget, free, incoming)
    assert not any(v.pinned for v in victims)
    assert len({v.digest for v in victims}) == len(victims)
    assert all(v in entries for v in victims)


@given(cache_entries(), budgets, free_space, incoming_bytes)
def test_victims_are_the_least_recently_used(
    entries: list[CacheEntry], budget: Budget, free: int, incoming: int
) -> None:
    victims = plan_eviction(entries, budget, free, incoming)
    assert [_age(v) for v in victims] == sorted(_age(v) for v in victims)
    spared = [e for e in entries if not e.pinned and e not in victims]
    for victim in victims:
        assert all(_age(victim) <= _age(other) for other in spared)


@given(cache_entries(), budgets, free_space, incoming_bytes)
def test_the_budget_is_met_when_it_can_be_and_no_more_is_evicted(
    entries: list[CacheEntry], budget: Budget, free: int, incoming: int
) -> None:
    victims = plan_eviction(entries, budget, free, incoming)
    unpinned = [e for e in entries if not e.pinned]
    if _meets(entries, unpinned, budget, free, incoming):
        assert _meets(entries, victims, budget, free, incoming)
        if victims:  # minimal: one victim fewer would not do
            assert not _meets(entries, victims[:-1], budget, free, incoming)
    else:
        assert sorted(v.digest for v in victims) == sorted(e.digest for e in unpinned)


@given(cache_entries(), budgets, free_space, incoming_bytes)
def test_nothing_is_evicted_within_budget(entries: list[CacheEntry], budget: Budget, free: int, incoming: int) -> None:
    if _meets(entries, [], budget, free, incoming):
        assert plan_eviction(entries, budget, free, incoming) == []


def test_plan_eviction_examples() -> None:
    def entry(i: int, used: float, usage: int, *, count: int = 1, pinned: bool = False) -> CacheEntry:
        return CacheEntry(f"{i:064x}", "vm", str(i), "arm64", 0, usage, 0.0, used, count, pinned)

    old, mid, new, pinned = entry(1, 10, 100), entry(2, 20, 100), entry(3, 30, 100), entry(4, 0, 500, pinned=True)
    everything = [new, pinned, old, mid]
    assert plan_eviction(everything, Budget(max_bytes=800), free_bytes=0) == []
    assert plan_eviction(everything, Budget(max_bytes=799), free_bytes=0) == [old]
    assert plan_eviction(everything, Budget(max_bytes=700), free_bytes=0, incoming=50) == [old, mid]
    assert plan_eviction(everything, Budget(keep_free_bytes=1000), free_bytes=850) == [old, mid]
    assert plan_eviction(everything, Budget(max_bytes=0), free_bytes=0) == [old, mid, new]
    tie = entry(5, 10, 100, count=0)
    assert plan_eviction([old, tie], Budget(max_bytes=100), free_bytes=0) == [tie]


# ---- bundles ----------------------------------------------------------------------------------
def _make_bundle(root: Path, variant: int = 0) -> PackIndex:
    """A VM-like folder: ``variant`` changes one grid cell of the disk and the config."""
    rng = random.Random(1234)  # the same base data for every variant: versions share chunks
    root.mkdir(parents=True)
    (root / "config.pvs").write_text(f"<ParallelsVirtualMachine variant='{variant}'/>\n")
    disk_dir = root / "harddisk.hdd"
    disk_dir.mkdir()
    with open(disk_dir / "disk.hds", "wb") as f:
        f.truncate(16 * CHUNK)
        for cell in (0, 3, 7, 12):
            f.seek(cell * CHUNK)
            f.write(rng.randbytes(CHUNK))
        f.seek(7 * CHUNK + 100)
        f.write(f"variant {variant}".encode())
    (disk_dir / "DiskDescriptor.xml").write_text("<Parallels_disk_image/>\n")
    os.symlink("harddisk.hdd/disk.hds", root / "current.hds")
    past = time.time() - 3600
    for path in [root, *root.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)
    return build_index(root, CHUNK)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[VmCache]:
    c = VmCache(tmp_path / "cache", Budget())
    try:
        yield c
    finally:
        c.close()


def _add(
    cache: VmCache, src: Path, index: PackIndex, version: str = "1.0", arch: str = "arm64", catalog_id: str = CID
) -> CacheEntry:
    """What a pull does: fill the staging folder, then commit it."""
    folder = cache.staging_dir(index.digest)
    clone_tree(src, folder)
    return cache.commit(index.digest, index, folder, catalog_id=catalog_id, version=version, architecture=arch)


def _bundle_tree(root: Path) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        st_ = os.lstat(path)
        content = os.readlink(path).encode() if path.is_symlink() else (path.read_bytes() if path.is_file() else b"")
        out[path.relative_to(root).as_posix()] = (st_.st_mode, content)
    return out


# ---- commit / lookup / materialize ------------------------------------------------------------
def test_commit_lookup_materialize_round_trip(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    d = index.digest
    assert cache.lookup(d, index) is None

    entry = _add(cache, src, index, "1.0", "arm64")
    assert (entry.digest, entry.catalog_id, entry.version, entry.architecture) == (d, CID, "1.0", "arm64")
    assert entry.size == index.size and 0 < entry.disk_usage < index.size
    assert (entry.use_count, entry.pinned) == (1, False)
    assert not cache.staging_dir(d).exists()
    assert (cache.root / "bundles" / f"{d}.index.json").read_bytes() == index.canonical_bytes()
    assert cache.entries() == [entry] and cache.usage() == entry.disk_usage

    assert entry.kind == BUNDLE
    hit = cache.lookup(d, index)
    assert hit is not None and hit.kind == BUNDLE and (cache.root / "bundles" / d).is_dir()
    bumped = cache.get(d)
    assert bumped is not None and bumped.use_count == 2 and bumped.last_used >= entry.last_used
    assert cache.cached_index(d) == index

    dest = tmp_path / "out" / "my-vm.pvm"
    assert cache.materialize(d, dest) in ("reflink", "sparse-copy")
    assert build_index(dest, CHUNK).digest == d
    assert _bundle_tree(dest) == _bundle_tree(src)
    assert os.stat(dest / "harddisk.hdd" / "disk.hds").st_blocks * 512 <= 8 * CHUNK  # still sparse
    with pytest.raises(Conflict):
        cache.materialize(d, dest)

    # committing the same VM again is a no-op that cleans up the duplicate staging copy
    again = _add(cache, src, index, "1.0", "arm64")
    assert again.digest == d and again.created_at == entry.created_at
    assert list((cache.root / "staging").iterdir()) == []
    with pytest.raises(InvalidInput):
        cache.lookup(d, _make_bundle(tmp_path / "other", variant=1))


def _rewrite_config(b: Path) -> None:
    path = b / "config.pvs"
    text = path.read_text()
    path.write_text(text.replace("variant", "VARIANT"))  # same size, new mtime


def _add_lock_file(b: Path) -> None:
    (b / "harddisk.hdd" / "disk.hds.lock").write_text("pid")


def _folder_for_file(b: Path) -> None:
    (b / "config.pvs").unlink()
    (b / "config.pvs").mkdir()


def _retarget(b: Path) -> None:
    (b / "current.hds").unlink()
    os.symlink("harddisk.hdd/DiskDescriptor.xml", b / "current.hds")


TAMPERING: dict[str, Callable[[Path], None]] = {
    "same-size rewrite": _rewrite_config,
    "truncated disk": lambda b: os.truncate(b / "harddisk.hdd" / "disk.hds", 5),
    "missing file": lambda b: (b / "harddisk.hdd" / "DiskDescriptor.xml").unlink(),
    "extra file": _add_lock_file,
    "symlink retargeted": _retarget,
    "file replaced by folder": _folder_for_file,
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_a_modified_cached_bundle_is_a_miss_and_is_removed(tmp_path: Path, cache: VmCache, how: str) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    _add(cache, src, index)
    bundle = cache.root / "bundles" / index.digest
    TAMPERING[how](bundle)
    assert cache.lookup(index.digest, index) is None
    assert cache.get(index.digest) is None
    assert not bundle.exists()
    assert not (cache.root / "bundles" / f"{index.digest}.index.json").exists()
    assert list((cache.root / "bundles").iterdir()) == []  # no trash left either
    _add(cache, src, index)  # and it can be cached again
    hit = cache.lookup(index.digest, index)
    assert hit is not None and hit.kind == BUNDLE and bundle.is_dir()


def test_commit_refuses_a_folder_that_is_not_the_indexed_vm(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    (src / "config.pvs").unlink()
    with pytest.raises(Conflict, match=r"config\.pvs"):
        cache.commit(index.digest, index, src, catalog_id=CID, version="1.0", architecture="arm64")
    assert cache.entries() == [] and src.is_dir()
    with pytest.raises(InvalidInput):
        cache.commit("0" * 64, index, src, catalog_id=CID, version="1.0", architecture="arm64")


def test_staging_dir_keeps_partial_downloads_and_drops_uncommitted_ones(cache: VmCache) -> None:
    d = "ab" * 32
    staging = cache.staging_dir(d)
    assert staging == cache.root / "staging" / d and not staging.exists()
    partial = staging.with_name(f".{d}.pdcat-partial")  # the transfer engine's, resumed later
    partial.mkdir()
    (partial / "disk.hds").write_bytes(b"half")
    staging.mkdir()
    (staging / "finished-but-never-committed").write_text("x")
    assert cache.staging_dir(d) == staging and not staging.exists()
    assert (partial / "disk.hds").read_bytes() == b"half"
    with pytest.raises(InvalidInput):
        cache.staging_dir("../etc")


# ---- chunk reuse from bundles ---------------------------------------------------------------------
def test_local_chunks_finds_raw_ranges_in_other_cached_bundles(tmp_path: Path, cache: VmCache) -> None:
    index1 = _make_bundle(tmp_path / "v1")
    index2 = _make_bundle(tmp_path / "v2", variant=2)
    _add(cache, tmp_path / "v1", index1, "1.0")
    shared = index1.unique_digests().keys() & index2.unique_digests().keys()
    only_v2 = index2.unique_digests().keys() - shared
    assert shared and only_v2

    local = cache.local_chunks(index2, exclude=index2.digest)
    assert {d for d in index2.unique_digests() if local.has(d)} == shared
    for chunk_digest in shared:
        buf = bytearray(index2.unique_digests()[chunk_digest])
        assert local.read_range(chunk_digest, memoryview(buf))
        assert hashlib.sha256(buf).hexdigest() == chunk_digest
        assert local.read_object(chunk_digest, memoryview(bytearray(CHUNK * 2))) is None  # no chunk objects
    assert not local.read_range(next(iter(only_v2)), memoryview(bytearray(CHUNK)))
    some = next(iter(shared))
    assert not local.read_range(some, memoryview(bytearray(index2.unique_digests()[some] + 1)))  # wrong size

    cache.remove(index1.digest)
    assert not local.read_range(some, memoryview(bytearray(index2.unique_digests()[some])))  # evicted: download
    assert not any(cache.local_chunks(index2).has(d) for d in index2.unique_digests())


# ---- chunks entries -----------------------------------------------------------------------------
def _keep_chunks(
    cache: VmCache, src: Path, index: PackIndex, version: str = "1.0", *, commit: bool = True
) -> CacheEntry | None:
    """What a pull to a destination without copy-on-write does: reserve, keep each chunk object as
    storage would serve it (zstd of the raw bytes), commit."""
    cache.reserve(index.digest, index)
    local = cache.local_chunks(index, exclude=index.digest, keep=True)
    for entry in index.files:
        for chunk in entry.chunks:
            if not local.has(chunk.digest):
                local.keep(chunk.digest, memoryview(compress(read_cell(src / entry.path, chunk.offset, chunk.size))))
    if not commit:
        return None
    return cache.commit_chunks(index.digest, index, catalog_id=CID, version=version, architecture="arm64")


def _objects(cache: VmCache) -> dict[str, int]:
    """Chunk objects on disk (and temporary files): name -> allocated bytes."""
    return {
        p.name: p.stat().st_blocks * 512
        for p in (cache.root / "chunks").rglob("*")
        if p.is_file() and p.name != ".swept"
    }


def _index_bytes(cache: VmCache, digest: str) -> int:
    return -(-(cache.root / "bundles" / f"{digest}.index.json").stat().st_size // 4096) * 4096


def test_a_chunks_entry_keeps_compressed_objects_and_no_bundle(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    d = index.digest
    entry = _keep_chunks(cache, src, index)
    assert entry is not None and entry.kind == CHUNKS and entry.size == index.size
    assert not (cache.root / "bundles" / d).exists() and list((cache.root / "staging").iterdir()) == []
    objects = _objects(cache)
    assert objects.keys() == index.unique_digests().keys()
    for chunk_digest, size in index.unique_digests().items():
        blob = (cache.root / "chunks" / chunk_digest[:2] / chunk_digest).read_bytes()
        assert blob == compress(decompress(blob, chunk_digest, size))  # the object as stored, and it verifies
    assert entry.disk_usage == sum(objects.values()) + _index_bytes(cache, d) == cache.usage()

    hit = cache.lookup(d, index)
    assert hit is not None and hit.kind == CHUNKS and hit.use_count == 2
    assert cache.cached_index(d) == index
    local = cache.local_chunks(index, exclude=d)
    assert all(local.has(c) for c in index.unique_digests())


def test_shared_chunk_objects_are_charged_once_and_deleted_with_their_last_user(tmp_path: Path, cache: VmCache) -> None:
    indexes = [_make_bundle(tmp_path / f"v{v}", variant=v) for v in range(2)]
    entries = [_keep_chunks(cache, tmp_path / f"v{v}", index, f"{v}.0") for v, index in enumerate(indexes)]
    assert all(e is not None for e in entries)
    objects = _objects(cache)
    digests = [set(index.unique_digests()) for index in indexes]
    assert objects.keys() == digests[0] | digests[1] and digests[0] & digests[1]
    # the usages add up to what is on disk: each shared object charged to one entry only
    index_files = sum(_index_bytes(cache, index.digest) for index in indexes)
    assert cache.usage() == sum(objects.values()) + index_files
    by_digest = {e.digest: e for e in cache.entries()}
    newer = by_digest[indexes[1].digest]  # the most recently used carries the shared objects
    assert newer.disk_usage == sum(objects[c] for c in digests[1]) + _index_bytes(cache, indexes[1].digest)

    cache.remove(indexes[1].digest)
    assert _objects(cache).keys() == digests[0]  # what v1 still uses stays
    older = cache.get(indexes[0].digest)
    assert older is not None and older.disk_usage == cache.usage()
    cache.remove(indexes[0].digest)
    assert _objects(cache) == {} and cache.usage() == 0
    assert sorted(os.listdir(cache.root / "bundles")) == []


def test_evicting_chunks_entries_meets_the_budget_least_recently_used_first(tmp_path: Path, cache: VmCache) -> None:
    indexes = [_make_bundle(tmp_path / f"v{v}", variant=v) for v in range(3)]
    for v, index in enumerate(indexes):
        _keep_chunks(cache, tmp_path / f"v{v}", index, f"{v}.0")
    cache.lookup(indexes[0].digest, indexes[0])  # v0 used again: v1 is now the least recently used
    usage = cache.usage()

    cache.budget = Budget(max_bytes=usage - 1)
    assert [e.digest for e in cache.prune(dry_run=True)] == [indexes[1].digest]
    assert [e.digest for e in cache.prune()] == [indexes[1].digest]
    on_disk = sum(_objects(cache).values()) + sum(_index_bytes(cache, i.digest) for i in (indexes[0], indexes[2]))
    assert on_disk == cache.usage() <= usage - 1  # what the plan counted is what the disk holds
    left = set(indexes[0].unique_digests()) | set(indexes[2].unique_digests())
    assert _objects(cache).keys() == left

    cache.pin(indexes[2].digest)
    cache.budget = Budget(max_bytes=0)
    assert [e.digest for e in cache.prune()] == [indexes[0].digest]
    assert _objects(cache).keys() == set(indexes[2].unique_digests())  # pinned: kept, with every object
    assert cache.usage() == sum(_objects(cache).values()) + _index_bytes(cache, indexes[2].digest)


def test_a_reservation_protects_its_chunks_until_its_pull_is_gone(tmp_path: Path, cache: VmCache) -> None:
    index1 = _make_bundle(tmp_path / "v1")
    index2 = _make_bundle(tmp_path / "v2", variant=2)
    _keep_chunks(cache, tmp_path / "v1", index1, "1.0")
    shared = set(index1.unique_digests()) & set(index2.unique_digests())

    other = VmCache(cache.root, Budget())  # another process, pulling v2 right now
    try:
        with other.lock(index2.digest):
            other.reserve(index2.digest, index2)
            cache.budget = Budget(max_bytes=0)
            assert [e.digest for e in cache.prune()] == [index1.digest]
            assert _objects(cache).keys() == shared  # v1 is gone, but what the pull of v2 will read is not
            assert cache.entries() == []
            assert (cache.root / "bundles" / f"{index2.digest}.index.json").is_file()
        # the pull died without committing: once its lock is free, the next prune sweeps its reservation
        assert cache.prune() == []
        assert _objects(cache) == {} and sorted(os.listdir(cache.root / "bundles")) == []
    finally:
        other.close()


def test_a_reservation_is_committed_with_the_objects_that_are_there(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    _keep_chunks(cache, src, index, commit=False)
    lost = next(iter(index.unique_digests()))
    (cache.root / "chunks" / lost[:2] / lost).unlink()  # e.g. the cache's disk filled up midway
    entry = cache.commit_chunks(index.digest, index, catalog_id=CID, version="1.0", architecture="arm64")
    assert entry is not None and entry.disk_usage == sum(_objects(cache).values()) + _index_bytes(cache, index.digest)
    assert not cache.local_chunks(index).has(lost)  # a later pull downloads that one again

    cache.release(index.digest)  # a failed pull of a cached VM keeps the entry
    assert cache.get(index.digest) is not None

    with VmCache(tmp_path / "another", Budget()) as empty, empty.lock(index.digest):
        empty.reserve(index.digest, index)  # a pull that could keep nothing (a full or read-only cache)
        assert empty.commit_chunks(index.digest, index, catalog_id=CID, version="1.0", architecture="arm64") is None
        assert empty.get(index.digest) is None  # no object kept: no entry, and no index file either
        assert not (empty.root / "bundles" / f"{index.digest}.index.json").exists()


def test_a_damaged_chunk_object_is_dropped_and_keeping_stops_quietly_on_a_full_cache(
    tmp_path: Path, cache: VmCache
) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    _keep_chunks(cache, src, index)
    victim = next(iter(index.unique_digests()))
    local = cache.local_chunks(index, keep=True)
    buf = bytearray(2 * CHUNK)
    n = local.read_object(victim, memoryview(buf))
    assert n is not None and bytes(buf[:n]) == (cache.root / "chunks" / victim[:2] / victim).read_bytes()
    local.drop(victim)  # the transfer engine found it corrupt
    assert not local.has(victim) and not (cache.root / "chunks" / victim[:2] / victim).exists()
    assert local.read_object(victim, memoryview(buf)) is None

    shard = cache.root / "chunks" / victim[:2]
    for path in shard.iterdir():
        path.unlink()
    shard.rmdir()
    shard.write_text("not a folder")  # the cache cannot take it back (as a full disk would refuse it)
    local.keep(victim, memoryview(b"x"))
    assert not local.keeping and not local.has(victim)  # the pull goes on, without keeping


def test_a_bundle_commit_replaces_a_chunks_entry_of_the_same_vm(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    _keep_chunks(cache, src, index)
    assert _objects(cache)
    entry = _add(cache, src, index)
    assert entry.kind == BUNDLE and cache.entries() == [entry]
    assert _objects(cache) == {}  # the bundle holds the same bytes: its objects went
    # and keeping chunks for a VM cached as a bundle leaves the bundle as it is
    kept = _keep_chunks(cache, src, index)
    assert kept is not None and kept.kind == BUNDLE and _objects(cache) == {}


def test_prune_sweeps_unreferenced_objects_and_stale_temporary_files(tmp_path: Path, cache: VmCache) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    _keep_chunks(cache, src, index)
    kept = _objects(cache)
    stray = "ef" * 32
    (cache.root / "chunks" / "ef").mkdir(exist_ok=True)
    (cache.root / "chunks" / "ef" / stray).write_bytes(b"left by a crash")
    stale = cache.root / "chunks" / "ef" / f".{stray}.1234.tmp"
    fresh = cache.root / "chunks" / "ef" / f".{stray}.5678.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert cache.prune() == []
    assert _objects(cache).keys() == kept.keys() | {fresh.name}  # a fresh temp file may be a write under way
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert cache.prune() == [] and stale.exists()  # chunk objects are listed once a day, not on every prune


def test_a_cache_made_before_chunks_entries_still_opens(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(root / "index.sqlite")
    db.execute(
        "CREATE TABLE entries (digest TEXT PRIMARY KEY, catalog_id TEXT NOT NULL, version TEXT NOT NULL, "
        "architecture TEXT NOT NULL, size INTEGER NOT NULL, disk_usage INTEGER NOT NULL, created_at REAL NOT NULL, "
        "last_used REAL NOT NULL, use_count INTEGER NOT NULL, pinned INTEGER NOT NULL, fingerprint TEXT NOT NULL)"
    )
    db.execute("INSERT INTO entries VALUES (?, 'vm', '1', 'arm64', 10, 4096, 1.0, 2.0, 1, 0, '{}')", ("ab" * 32,))
    db.commit()
    db.close()
    with VmCache(root, Budget()) as c:
        (entry,) = c.entries()
        assert entry.kind == BUNDLE and entry.disk_usage == 4096


# ---- pin / remove / refs ----------------------------------------------------------------------
def test_pin_unpin_and_remove_by_prefix_and_ref(tmp_path: Path, cache: VmCache) -> None:
    index1 = _make_bundle(tmp_path / "v1")
    index2 = _make_bundle(tmp_path / "v2", variant=2)
    _add(cache, tmp_path / "v1", index1, "1.0", "x86_64")
    _add(cache, tmp_path / "v2", index2, "2.0", "arm64")
    d1, d2 = index1.digest, index2.digest

    assert cache.pin(d1[:8]).pinned
    assert cache.get(d1) == cache.pin(d1, True)  # by full digest, idempotent
    assert not cache.pin(f"{CID}:1.0:x86_64", False).pinned
    assert cache.pin(f"{CID.upper()}:2.0:aarch64").digest == d2  # the ref is normalised like a pull's
    assert cache.pin(f"{CID}:2.0").pinned

    with pytest.raises(NotFound):
        cache.pin("deadbeefdeadbeef")
    with pytest.raises(NotFound):
        cache.remove(f"{CID}:3.0")
    for bad in ("abc", "not-hex-at-all", f"{CID}:1.0:arm64:x", f"{CID}:1.0:sparc"):
        with pytest.raises(InvalidInput):
            cache.pin(bad)

    removed = cache.remove(f"{CID}:1.0:amd64")
    assert removed.digest == d1
    assert cache.get(d1) is None and not (cache.root / "bundles" / d1).exists()
    removed = cache.remove(d2[:10].upper())  # pinned entries can still be removed explicitly
    assert removed.digest == d2 and removed.pinned
    assert cache.entries() == [] and sorted(os.listdir(cache.root / "bundles")) == []


def test_ambiguous_refs_are_refused(tmp_path: Path, cache: VmCache) -> None:
    index = _make_bundle(tmp_path / "vm")
    _add(cache, tmp_path / "vm", index, "1.0", "arm64")
    _add(cache, tmp_path / "vm", _make_bundle(tmp_path / "vm2", variant=1), "1.0", "x86_64")
    with pytest.raises(InvalidInput, match="matches 2"):
        cache.pin(f"{CID}:1.0")

    # Two one-folder packs whose digests share their first 8 hex characters (found by a birthday
    # search over folder names, offline): the prefix names neither, a longer one names each.
    twins = []
    for name in ("d58849", "d85216"):
        idx = PackIndex(4096, (FileEntry(name, DIR, 0o755),))
        folder = tmp_path / name / "bundle"
        (folder / name).mkdir(parents=True)
        _add(cache, folder, idx, name, "arm64", catalog_id="twins")
        twins.append(idx.digest)
    assert twins[0][:8] == twins[1][:8] and twins[0] != twins[1]
    with pytest.raises(InvalidInput, match="matches 2"):
        cache.pin(twins[0][:8])
    with pytest.raises(InvalidInput, match="matches 2"):
        cache.remove(twins[0][:8])
    assert cache.pin(twins[0][:12]).digest == twins[0]
    assert cache.remove(twins[1][:12]).digest == twins[1]


# ---- prune ------------------------------------------------------------------------------------
def test_prune_dry_run_then_real(tmp_path: Path, cache: VmCache) -> None:
    indexes = [_make_bundle(tmp_path / f"v{v}", variant=v) for v in range(3)]
    for v, index in enumerate(indexes):
        _add(cache, tmp_path / f"v{v}", index, f"{v}.0")
    digests = [index.digest for index in indexes]
    cache.lookup(digests[0], indexes[0])  # v0 used again: v1 is now the least recently used
    usage = cache.usage()

    cache.budget = Budget(max_bytes=usage - 1)
    planned = cache.prune(dry_run=True)
    assert [e.digest for e in planned] == [digests[1]]
    assert len(cache.entries()) == 3 and (cache.root / "bundles" / digests[1]).is_dir()

    evicted = cache.prune()
    assert [e.digest for e in evicted] == [digests[1]]
    assert cache.get(digests[1]) is None and not (cache.root / "bundles" / digests[1]).exists()
    assert cache.prune() == []  # within budget now

    cache.pin(digests[2])
    cache.budget = Budget(max_bytes=0)
    assert [e.digest for e in cache.prune(dry_run=True)] == [digests[0]]
    assert [e.digest for e in cache.prune()] == [digests[0]]
    assert [e.digest for e in cache.entries()] == [digests[2]]  # pinned: kept although over budget

    cache.pin(digests[2], False)
    cache.budget = Budget(keep_free_bytes=2**62)  # more free space than any disk has
    assert [e.digest for e in cache.prune(incoming=10)] == [digests[2]]
    assert cache.usage() == 0


def test_prune_skips_an_entry_in_use_and_sweeps_leftovers(tmp_path: Path, cache: VmCache) -> None:
    indexes = [_make_bundle(tmp_path / f"v{v}", variant=v) for v in range(2)]
    for v, index in enumerate(indexes):
        _add(cache, tmp_path / f"v{v}", index, f"{v}.0")
    bundles = cache.root / "bundles"
    orphan = "cd" * 32
    (bundles / orphan).mkdir()  # a crash between the rename and the row
    (bundles / f"{orphan}.index.json").write_text("{}")
    (bundles / ".trash-x").mkdir()
    (bundles / ".trash-x" / "f").write_text("x")
    partial = cache.root / "staging" / f".{orphan}.pdcat-partial"
    partial.mkdir()

    other = VmCache(cache.root, Budget())  # another process, materialising v0 right now
    try:
        with other.lock(indexes[0].digest):
            cache.budget = Budget(max_bytes=0)
            evicted = cache.prune()
        assert [e.digest for e in evicted] == [indexes[1].digest]
        assert [e.digest for e in other.entries()] == [indexes[0].digest]
    finally:
        other.close()
    assert sorted(p.name for p in bundles.iterdir()) == sorted([indexes[0].digest, f"{indexes[0].digest}.index.json"])
    assert partial.is_dir()  # partial downloads are the transfer engine's to resume


# ---- concurrency ------------------------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False], ids=["one-cache-object", "two-cache-objects"])
def test_two_pulls_of_one_vm_commit_once(tmp_path: Path, shared: bool) -> None:
    src = tmp_path / "vm.pvm"
    index = _make_bundle(src)
    d = index.digest
    root = tmp_path / "cache"
    caches = [VmCache(root, Budget())]
    caches.append(caches[0] if shared else VmCache(root, Budget()))
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def pull(c: VmCache) -> None:
        try:
            barrier.wait()
            with c.lock(d):
                if c.lookup(d, index) is not None:
                    outcomes.append("hit")
                    return
                folder = c.staging_dir(d)
                clone_tree(src, folder)
                time.sleep(0.2)  # a slow download: the other pull must wait, not start its own
                c.commit(d, index, folder, catalog_id=CID, version="1.0", architecture="arm64")
                outcomes.append("commit")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(c,)) for c in caches]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        assert sorted(outcomes) == ["commit", "hit"]
        entry = caches[0].get(d)
        assert entry is not None and entry.use_count == 2
    finally:
        for c in {id(c): c for c in caches}.values():
            c.close()


# ---- configuration ----------------------------------------------------------------------------
def test_configuration_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDCAT_CACHE_MAX_BYTES", raising=False)
    monkeypatch.delenv("PDCAT_CACHE_KEEP_FREE_BYTES", raising=False)
    assert budget_from_env() == Budget(max_bytes=None, keep_free_bytes=DEFAULT_KEEP_FREE_BYTES)
    monkeypatch.setenv("PDCAT_CACHE_MAX_BYTES", "1000")
    monkeypatch.setenv("PDCAT_CACHE_KEEP_FREE_BYTES", "0")
    assert budget_from_env() == Budget(max_bytes=1000, keep_free_bytes=0)
    monkeypatch.setenv("PDCAT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    with VmCache() as c:
        assert c.root == tmp_path / "elsewhere" and c.budget == Budget(1000, 0)
        assert (c.root / "index.sqlite").is_file()
    monkeypatch.setenv("PDCAT_CACHE_MAX_BYTES", "10GB")
    with pytest.raises(InvalidInput, match="PDCAT_CACHE_MAX_BYTES"):
        budget_from_env()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_kept_objects_are_exact_whether_or_not_the_filesystem_takes_direct_writes(tmp_path: Path, where: str) -> None:
    """Objects are written with O_DIRECT where the filesystem takes it (padded to 4 KiB, then cut to
    length) and buffered where it refuses (tmpfs): either way the file holds exactly the object."""
    root = tmp_path if where == "disk" else Path("/dev/shm")
    folder = root / f"pdcat-keep-{os.getpid()}-{random.randrange(1 << 30)}"
    folder.mkdir()
    try:
        local = LocalChunks(folder, set(), {}, keep=True)
        for size in (1, 4095, 4096, 4097, 300_001):
            blob = random.Random(size).randbytes(size)
            digest = hashlib.sha256(blob).hexdigest()
            local.keep(digest, memoryview(blob))
            assert local.keeping and local.has(digest)
            assert (folder / digest[:2] / digest).read_bytes() == blob
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform (macOS): nothing to test")
def test_a_filesystem_that_creates_the_file_then_refuses_direct_writes_still_gets_the_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux creates the file before it refuses O_DIRECT (tmpfs before 6.6): the object is then written
    the ordinary way, under the same exclusive name, and the cache keeps on keeping."""
    real_open = os.open

    def refusing(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & O_DIRECT:
            os.close(real_open(path, flags & ~O_DIRECT, mode))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refusing)
    local = LocalChunks(tmp_path, set(), {}, keep=True)
    for size in (4096, 300_001):
        blob = random.Random(size).randbytes(size)
        digest = hashlib.sha256(blob).hexdigest()
        local.keep(digest, memoryview(blob))
        assert local.keeping and (tmp_path / digest[:2] / digest).read_bytes() == blob

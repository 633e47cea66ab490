"""client.cache: the eviction plan as properties, and the cache itself on a real folder.

Bundles here are small VM-like folders indexed with ``client.packer.build_index`` on a 64 KiB grid,
so versions share most of their chunks the way real VM versions do. Their files get an mtime an hour
in the past: a modification made by a test then always moves the mtime, whatever the clock's tick.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.cache import (
    DEFAULT_KEEP_FREE_BYTES,
    Budget,
    CacheEntry,
    VmCache,
    budget_from_env,
    cache_dir,
    plan_eviction,
)
from client.clone import clone_tree
from client.packer import build_index
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

    hit = cache.lookup(d, index)
    assert hit == cache.root / "bundles" / d
    bumped = cache.get(d)
    assert bumped is not None and bumped.use_count == 2 and bumped.last_used >= entry.last_used

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
    assert cache.lookup(index.digest, index) == bundle


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


# ---- chunk reuse ------------------------------------------------------------------------------
def test_chunk_source_finds_chunks_of_other_versions(tmp_path: Path, cache: VmCache) -> None:
    index1 = _make_bundle(tmp_path / "v1")
    index2 = _make_bundle(tmp_path / "v2", variant=2)
    _add(cache, tmp_path / "v1", index1, "1.0")
    assert cache.chunk_source(index2, exclude=index2.digest)  # found before v2 is cached at all
    _add(cache, tmp_path / "v2", index2, "2.0")

    shared = index1.unique_digests().keys() & index2.unique_digests().keys()
    only_v2 = index2.unique_digests().keys() - shared
    assert shared and only_v2
    sources = cache.chunk_source(index2, exclude=index2.digest)
    assert sources.keys() == shared
    bundle1 = cache.root / "bundles" / index1.digest
    for chunk_digest, where in sources.items():
        assert where[0].is_relative_to(bundle1)
        data = cache.read_chunk(where, chunk_digest)
        assert data is not None and hashlib.sha256(data).hexdigest() == chunk_digest
    assert cache.chunk_source(index2).keys() == index2.unique_digests().keys()  # v2 itself counts too

    some_digest, where = next(iter(sources.items()))
    assert cache.read_chunk(where, "0" * 64) is None
    assert cache.read_chunk((bundle1 / "nope", 0, 10), some_digest) is None
    assert cache.read_chunk((where[0], where[1] + 1, where[2]), some_digest) is None

    cache.remove(index1.digest)
    assert cache.chunk_source(index2, exclude=index2.digest) == {}
    assert cache.read_chunk(where, some_digest) is None  # evicted meanwhile: the caller downloads


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

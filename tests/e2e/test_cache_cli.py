"""The local VM cache through the ``pdcat`` command: a default pull writes the bundle once (compressed
chunks kept where the destination cannot share blocks, a cloned bundle where it can), hits that fetch
nothing, chunk reuse across versions, damaged cached chunks, resume, eviction order, pins."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.clone import supports_reflink
from tests.e2e.conftest import Pdcat, assert_same_tree, listing, make_bundle, needs_embedded
from tests.e2e.fault_helpers import Background, chunk_dir, random_bundle, spawn, wait_until

ARCH = "x86_64"
MIB = 1024 * 1024


def _pull(pdcat: Pdcat, ref: str, dest: Path, name: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    return pdcat.json("pull", ref, "--arch", ARCH, "--dest", str(dest), "--name", name, "--no-register", env=env)


@pytest.mark.every_backend
def test_a_second_pull_is_a_cache_hit_and_a_new_version_reuses_cached_chunks(
    pdcat: Pdcat, cid: str, tmp_path: Path
) -> None:
    v1 = make_bundle(tmp_path / "src1")
    v2 = make_bundle(tmp_path / "src2", variant=1)
    pdcat.push(v1, cid, "1")
    pdcat.push(v2, cid, "2")
    dest = tmp_path / "vms"

    cold = _pull(pdcat, f"{cid}:1", dest, "cold")
    assert cold["cache"] == "miss" and cold["downloaded_chunks"] > 0

    hit = _pull(pdcat, f"{cid}:1", dest, "hit")
    assert hit["cache"] == "hit" and hit["downloaded_chunks"] == 0 and hit["downloaded_bytes"] == 0
    assert_same_tree(v1, dest / "hit.pvm")

    # version 2 differs in one chunk: everything else is read from the cached version 1
    newer = _pull(pdcat, f"{cid}:2", dest, "newer")
    assert newer["cache"] == "miss"
    assert newer["downloaded_chunks"] <= 2, newer
    assert newer["reused_chunks"] >= cold["downloaded_chunks"] - 2
    assert newer["downloaded_chunks"] + newer["reused_chunks"] == newer["chunks"]
    assert_same_tree(v2, dest / "newer.pvm")

    listing = pdcat.json("cache", "ls")
    assert {e["version"] for e in listing["items"]} == {"1", "2"}


def test_eviction_is_least_recently_used_first_and_pins_are_kept(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    dest = tmp_path / "vms"
    for n in (1, 2, 3):
        pdcat.push(make_bundle(tmp_path / f"s{n}", seed=n), cid, str(n))
        _pull(pdcat, f"{cid}:{n}", dest, f"v{n}")
    entries = {e["version"]: e for e in pdcat.json("cache", "ls")["items"]}
    assert set(entries) == {"1", "2", "3"}
    one = entries["1"]["disk_usage"]

    # version 1 is the least recently used; use it again so that version 2 becomes the oldest
    assert _pull(pdcat, f"{cid}:1", dest, "again")["cache"] == "hit"
    pdcat.ok("cache", "pin", f"{cid}:3:{ARCH}")

    budget = str(one + one // 2)  # room for one VM only
    dry = pdcat.json("cache", "prune", "--dry-run", "--max-size", budget, "--keep-free", "0")
    assert [e["version"] for e in dry["evicted"]] == ["2", "1"]  # LRU first; the pinned 3 never
    assert len(pdcat.json("cache", "ls")["items"]) == 3  # a dry run removes nothing

    done = pdcat.json("cache", "prune", "--max-size", budget, "--keep-free", "0")
    assert [e["version"] for e in done["evicted"]] == ["2", "1"]
    left = pdcat.json("cache", "ls")["items"]
    assert [(e["version"], e["pinned"]) for e in left] == [("3", True)]

    pdcat.ok("cache", "unpin", f"{cid}:3")
    pdcat.ok("cache", "rm", f"{cid}:3")
    assert pdcat.json("cache", "ls")["items"] == []
    # the pulled copies are the user's: eviction never touches them
    assert (dest / "v1.pvm" / "config.pvs").exists() and (dest / "v2.pvm" / "config.pvs").exists()


def test_a_pull_over_budget_reports_each_eviction(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    dest = tmp_path / "vms"
    pdcat.push(make_bundle(tmp_path / "a", seed=11), cid, "a")
    pdcat.push(make_bundle(tmp_path / "b", seed=12), cid, "b")
    _pull(pdcat, f"{cid}:a", dest, "a")
    size = pdcat.json("cache", "ls")["items"][0]["disk_usage"]
    env: dict[str, str | None] = {"PDCAT_CACHE_MAX_BYTES": str(size + size // 2), "PDCAT_CACHE_KEEP_FREE_BYTES": "0"}
    r = pdcat.ok("pull", f"{cid}:b", "--arch", ARCH, "--dest", str(dest), "--name", "b", "--no-register", env=env)
    assert f"Evicted {cid}:a ({ARCH}) from the cache" in r.out
    listed = pdcat.json("cache", "ls")
    assert [e["version"] for e in listed["items"]] == ["b"]
    assert _cache_bytes(Path(listed["root"])) == listed["usage"] <= size + size // 2  # what it says it holds


def test_cache_commands_explain_bad_references(pdcat: Pdcat) -> None:
    assert "needs" in pdcat.fail("cache", "pin")
    line = pdcat.fail("cache", "rm", "nothing-here:1")
    assert "not" in line.lower()


def test_no_cache_pulls_straight_to_the_destination(pdcat: Pdcat, cid: str, tmp_path: Path) -> None:
    pdcat.push(make_bundle(tmp_path / "s"), cid, "1")
    got = pdcat.json("pull", f"{cid}:1", "--arch", ARCH, "--dest", str(tmp_path / "d"), "--no-register", "--no-cache")
    assert got["cache"] == "off" and got["downloaded_chunks"] > 0
    assert pdcat.json("cache", "ls")["items"] == []


# ---- one write per pull, and what the cache keeps ----------------------------------------------------
def _cache_bytes(root: Path) -> int:
    """Disk bytes the cache holds: bundle folders, index files and chunk objects (not its database)."""
    total = 0
    for top in ("bundles", "chunks"):
        for path in (root / top).rglob("*"):
            st = path.lstat()
            total += st.st_blocks * 512 if not path.is_dir() or top == "bundles" else 0
    return total


def _objects(cache: Path) -> dict[str, int]:
    """Chunk objects the cache keeps: name (the chunk's sha256) -> bytes."""
    return {p.name: p.stat().st_size for p in (cache / "chunks").rglob("*") if p.is_file() and p.name[0] != "."}


@pytest.fixture
def plain_dest(tmp_path: Path) -> Iterator[Path]:
    """A destination folder on a filesystem that cannot share blocks with the cache: ``tmp_path`` if
    its filesystem cannot (ext4), else a folder in /dev/shm (tmpfs)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not supports_reflink(probe):
        yield tmp_path / "vms"
        return
    if not os.path.isdir("/dev/shm"):
        pytest.fail("tmp_path supports reflink and there is no /dev/shm for a destination without it")
    folder = Path(tempfile.mkdtemp(prefix="pdcat-e2e-", dir="/dev/shm"))
    try:
        yield folder / "vms"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.every_backend
def test_a_default_pull_writes_the_bundle_once_and_keeps_compressed_chunks(
    pdcat: Pdcat, cid: str, tmp_path: Path, plain_dest: Path
) -> None:
    cache = tmp_path / "cache"
    pdcat.env["PDCAT_CACHE_DIR"] = str(cache)
    src = make_bundle(tmp_path / "src")
    pushed = pdcat.push(src, cid, "1")
    got = _pull(pdcat, f"{cid}:1", plain_dest, "vm")
    assert got["cache"] == "miss" and got["downloaded_chunks"] == pushed["chunks"]
    assert_same_tree(src, plain_dest / "vm.pvm")
    assert listing(plain_dest) == ["vm.pvm"]  # no partial folder, no journal

    # the cache holds the chunks as downloaded (compressed, one object each) and no copy of the bundle
    objects = _objects(cache)
    assert len(objects) == pushed["chunks"] and sum(objects.values()) == got["downloaded_bytes"]
    assert [p.name for p in (cache / "bundles").iterdir()] == [f"{got['manifest']['pack']['digest']}.index.json"]
    assert listing(cache / "staging") == []
    (entry,) = pdcat.json("cache", "ls")["items"]
    assert entry["version"] == "1" and entry["disk_usage"] == _cache_bytes(cache)


@pytest.mark.every_backend
def test_a_second_pull_fetches_nothing_and_a_damaged_cached_chunk_is_downloaded_again(
    pdcat: Pdcat, cid: str, tmp_path: Path, plain_dest: Path
) -> None:
    cache = tmp_path / "cache"
    pdcat.env["PDCAT_CACHE_DIR"] = str(cache)
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1")
    cold = _pull(pdcat, f"{cid}:1", plain_dest, "cold")

    hit = _pull(pdcat, f"{cid}:1", plain_dest, "hit")
    assert (hit["cache"], hit["clone_method"], hit["downloaded_chunks"], hit["downloaded_bytes"]) == (
        "hit",
        "decompress",
        0,
        0,
    )
    assert hit["reused_chunks"] == hit["chunks"]
    assert_same_tree(src, plain_dest / "hit.pvm")

    # one cached object damaged (a flipped byte): detected before a byte of it is written, downloaded again
    objects = _objects(cache)
    victim = max(objects, key=lambda name: objects[name])
    path = cache / "chunks" / victim[:2] / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = pdcat.ok("pull", f"{cid}:1", "--arch", ARCH, "--dest", str(plain_dest), "--name", "again", "--no-register")
    assert f"cached copy of chunk {victim[:12]}" in r.err and "downloading it again" in r.err
    assert_same_tree(src, plain_dest / "again.pvm")
    assert _objects(cache) == objects  # the good object is back
    after = _pull(pdcat, f"{cid}:1", plain_dest, "after")
    assert (after["cache"], after["downloaded_chunks"]) == ("hit", 0)
    assert cold["downloaded_bytes"] == sum(objects.values())


def test_a_cached_vm_pulls_with_its_storage_gone(
    backend: Any, pdcat: Pdcat, cid: str, tmp_path: Path, plain_dest: Path
) -> None:
    """Nothing but the catalog's answer (access, taint, revoke, the pack digest) is fetched: the index
    and every chunk come from the cache, so a pull works with the version's objects deleted."""
    needs_embedded(backend, "the server's data folder (to delete the stored objects)")
    pdcat.env["PDCAT_CACHE_DIR"] = str(tmp_path / "cache")
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1")
    _pull(pdcat, f"{cid}:1", plain_dest, "first")
    stored = chunk_dir(backend.server.data_dir, cid).parent
    assert chunk_dir(backend.server.data_dir, cid).is_dir() and list(stored.rglob("index.json"))
    shutil.rmtree(stored)

    got = _pull(pdcat, f"{cid}:1", plain_dest, "second")
    assert (got["cache"], got["downloaded_chunks"], got["downloaded_bytes"]) == ("hit", 0, 0)
    assert_same_tree(src, plain_dest / "second.pvm")
    line = pdcat.fail("pull", f"{cid}:1", "--arch", ARCH, "--dest", str(plain_dest), "--no-register", "--no-cache")
    assert line.startswith("pdcat: ")  # without the cache it cannot: storage really is empty


@pytest.mark.every_backend
def test_a_killed_default_pull_resumes_from_its_journal_and_the_cache(
    pdcat: Pdcat, cid: str, tmp_path: Path, plain_dest: Path
) -> None:
    cache = tmp_path / "cache"
    pdcat.env["PDCAT_CACHE_DIR"] = str(cache)
    src = random_bundle(tmp_path / "src", "big", 13 * MIB, seed=21)
    total = pdcat.push(src, cid, "1")["chunks"]
    journal = plain_dest / ".vm.pvm.pdcat-journal"
    args = ["pull", f"{cid}:1", "--arch", ARCH, "--dest", str(plain_dest), "--name", "vm", "--no-register"]
    bg: Background = spawn(pdcat, *args, "--workers", "2", env={"PDCAT_DEBUG_CHUNK_DELAY": "0.03"})
    try:
        wait_until(lambda: journal.is_file() and journal.read_bytes().count(b"\n") >= 60, "60 journal lines",
                   timeout=60, process=bg)  # fmt: skip
        bg.kill9()
    finally:
        bg.stop()
    lines = journal.read_bytes().count(b"\n")  # the pack digest, then one finished chunk per line
    assert 60 <= lines < total - 20, f"{lines} journal lines of {total} chunks: the kill came too late"
    kept = len(_objects(cache))
    assert kept >= lines - 1  # every journaled chunk was kept before it was journaled
    assert pdcat.json("cache", "ls")["items"] == []  # nothing committed yet

    got = _pull(pdcat, f"{cid}:1", plain_dest, "vm")
    assert got["resumed_chunks"] == lines - 1
    # the rest: kept in the cache before the kill (read back, verified), or downloaded
    assert got["reused_chunks"] == kept - (lines - 1)
    assert got["downloaded_chunks"] == total - kept
    assert_same_tree(src, plain_dest / "vm.pvm")
    assert listing(plain_dest) == ["vm.pvm"]
    assert len(_objects(cache)) == total and len(pdcat.json("cache", "ls")["items"]) == 1


# ---- copy-on-write: the cache keeps the bundle and clones it ----------------------------------------
def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """An XFS filesystem with reflink, loop-mounted (root only; fails, never skips, without it: a
    silently skipped test would hide a broken copy-on-write path, as in tests/integration/test_clone.py)."""
    assert sys.platform.startswith("linux"), "the copy-on-write pull test needs Linux (XFS on a loop device)"
    assert os.geteuid() == 0, "the copy-on-write pull test needs root to loop-mount an XFS image"
    assert shutil.which("mkfs.xfs"), "mkfs.xfs is missing: apt-get install xfsprogs"
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(image, "wb") as f:
        f.truncate(400 * MIB)
    _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    mnt.mkdir()
    _run("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)


def test_on_a_copy_on_write_filesystem_the_cache_keeps_the_bundle_and_clones_it(
    pdcat: Pdcat, cid: str, tmp_path: Path, xfs: Path
) -> None:
    cache, dest = xfs / "cache", xfs / "vms"
    pdcat.env["PDCAT_CACHE_DIR"] = str(cache)
    pdcat.env["PDCAT_CACHE_KEEP_FREE_BYTES"] = "0"  # the small image has far less free than the default 5 GiB
    v1 = make_bundle(tmp_path / "src1")
    v2 = make_bundle(tmp_path / "src2", variant=1)
    pdcat.push(v1, cid, "1")
    pdcat.push(v2, cid, "2")

    cold = _pull(pdcat, f"{cid}:1", dest, "cold")
    assert (cold["cache"], cold["clone_method"]) == ("miss", "reflink")
    digest = cold["manifest"]["pack"]["digest"]
    assert (cache / "bundles" / digest).is_dir() and _objects(cache) == {}  # the bundle, written once, no chunks
    assert_same_tree(v1, dest / "cold.pvm")
    free = shutil.disk_usage(xfs).free
    hit = _pull(pdcat, f"{cid}:1", dest, "hit")
    assert (hit["cache"], hit["clone_method"], hit["downloaded_bytes"]) == ("hit", "reflink", 0)
    assert free - shutil.disk_usage(xfs).free < 4 * MIB  # a clone shares the blocks
    assert_same_tree(v1, dest / "hit.pvm")

    newer = _pull(pdcat, f"{cid}:2", dest, "newer")  # reuses version 1's chunks from its cached bundle
    assert newer["downloaded_chunks"] <= 2 and newer["reused_chunks"] >= cold["downloaded_chunks"] - 2
    assert_same_tree(v2, dest / "newer.pvm")

    # to a destination that cannot share blocks with it, the cached bundle is copied (one write)
    out = _pull(pdcat, f"{cid}:1", tmp_path / "elsewhere", "copy")
    assert (out["cache"], out["clone_method"], out["downloaded_bytes"]) == ("hit", "sparse-copy", 0)
    assert_same_tree(v1, tmp_path / "elsewhere" / "copy.pvm")


def test_a_cache_on_another_disk_does_not_count_against_the_destination(
    pdcat: Pdcat, cid: str, tmp_path: Path, plain_dest: Path
) -> None:
    """The space a pull needs at its destination is what it writes there: kept objects count only when
    the cache shares the destination's filesystem (issue 15, item 5)."""
    src = make_bundle(tmp_path / "src")
    pdcat.push(src, cid, "1")
    plans = {}
    for where, cache in (("same disk", tmp_path / "cache"), ("other disk", Path("/dev/shm") / f"pdcat-{cid}")):
        try:
            out = pdcat.ok(
                "pull", f"{cid}:1", "--arch", ARCH, "--dest", str(plain_dest / where), "--no-register",
                env={"PDCAT_CACHE_DIR": str(cache)},
            ).out  # fmt: skip
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        found = re.search(r"writes ([0-9.]+) (B|KiB|MiB|GiB)", out)
        assert found, out
        plans[where] = float(found.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(found.group(2))
        assert_same_tree(src, plain_dest / where / f"{cid}.pvm")
    assert plans["other disk"] < plans["same disk"], plans  # the kept objects land on the cache's own disk

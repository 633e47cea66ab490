"""client.clone on real filesystems: a sparse copy keeps bytes, holes, modes and symlinks; a reflink
clone on XFS is instant and costs no space; a failed or refused clone leaves nothing behind.

The reflink test builds an XFS image, loop-mounts it (root only) and needs ``mkfs.xfs`` (xfsprogs).
It fails, never skips, when it cannot: a silently skipped test would hide a broken reflink path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.clone import clone_tree, data_ranges, supports_reflink
from core.errors import Conflict, InvalidInput, NotFound

KiB, MiB = 1024, 1024 * 1024


def _sparse_file(path: Path, size: int, pieces: dict[int, bytes], mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    os.chmod(path, mode)


def _make_bundle(root: Path) -> dict[int, bytes]:
    """A small VM-like folder; returns the data pieces of its sparse disk."""
    root.mkdir()
    (root / "config.pvs").write_text("<ParallelsVirtualMachine/>\n")
    os.chmod(root / "config.pvs", 0o600)
    (root / "harddisk.hdd").mkdir(mode=0o750)
    pieces = {1 * MiB: os.urandom(4 * KiB), 10 * MiB: os.urandom(8 * KiB), 24 * MiB - 4 * KiB: os.urandom(4 * KiB)}
    _sparse_file(root / "harddisk.hdd" / "disk.hds", 24 * MiB, pieces, 0o640)
    _sparse_file(root / "harddisk.hdd" / "tail-hole.hds", 8 * MiB, {0: b"head"}, 0o644)
    (root / "empty.log").touch()
    (root / "tools").mkdir()
    (root / "tools" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "tools" / "run.sh", 0o4755)  # setuid: must not survive the copy
    (root / "locked").mkdir()
    (root / "locked" / "ro.txt").write_text("read only\n")
    os.chmod(root / "locked" / "ro.txt", 0o444)
    os.chmod(root / "locked", 0o555)
    os.symlink("harddisk.hdd/disk.hds", root / "current.hds")
    os.symlink("no-such-file", root / "dangling")
    return pieces


def _tree(root: Path) -> dict[str, tuple[str, int, object]]:
    """path -> (kind, mode, content digest | link target | None) for every entry below root."""
    out: dict[str, tuple[str, int, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()))
    return out


def _no_leftovers(folder: Path, *expected: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


def test_clone_preserves_bytes_holes_modes_and_symlinks(tmp_path: Path) -> None:
    src, dst = tmp_path / "vm.pvm", tmp_path / "copy.pvm"
    _make_bundle(src)
    disk = src / "harddisk.hdd" / "disk.hds"
    assert os.stat(disk).st_blocks * 512 < 1 * MiB, "the test filesystem must support sparse files"

    method = clone_tree(src, dst)

    assert method == ("reflink" if supports_reflink(tmp_path) else "sparse-copy")
    before, after = _tree(src), _tree(dst)
    assert after.keys() == before.keys()
    for rel, (kind, mode, content) in before.items():
        expected_mode = mode & ~(stat.S_ISUID | stat.S_ISGID)
        assert after[rel] == (kind, expected_mode, content), rel
    assert after["tools/run.sh"][1] == 0o755
    assert after["locked"][1] == 0o555
    for rel in ("harddisk.hdd/disk.hds", "harddisk.hdd/tail-hole.hds"):
        copy = os.stat(dst / rel)
        assert copy.st_blocks * 512 <= 256 * KiB, f"{rel} lost its holes"
        assert copy.st_mtime_ns == os.stat(src / rel).st_mtime_ns
    assert os.path.islink(dst / "dangling")
    _no_leftovers(tmp_path, "vm.pvm", "copy.pvm")


def test_clone_of_a_single_file(tmp_path: Path) -> None:
    src = tmp_path / "disk.hds"
    _sparse_file(src, 16 * MiB, {5 * MiB: b"data" * 1024}, 0o640)
    method = clone_tree(src, tmp_path / "copy.hds")
    assert method in ("reflink", "sparse-copy")
    copy = tmp_path / "copy.hds"
    assert copy.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o640
    assert os.stat(copy).st_blocks * 512 <= 256 * KiB


def test_an_existing_destination_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "vm.pvm"
    src.mkdir()
    (src / "a").write_text("a")
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep").write_text("mine")
    with pytest.raises(Conflict):
        clone_tree(src, dst)
    os.symlink("nowhere", tmp_path / "link")
    with pytest.raises(Conflict):
        clone_tree(src, tmp_path / "link")  # a dangling symlink counts as existing
    assert (dst / "keep").read_text() == "mine"
    with pytest.raises(NotFound):
        clone_tree(tmp_path / "missing", tmp_path / "new")
    _no_leftovers(tmp_path, "vm.pvm", "taken", "link")


def test_a_failed_clone_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "vm.pvm"
    src.mkdir()
    (src / "a-locked").mkdir()
    (src / "a-locked" / "data").write_bytes(b"x" * 10000)
    os.chmod(src / "a-locked", 0o500)  # already copied, read-only, when the failure comes
    os.mkfifo(src / "z-fifo")
    with pytest.raises(InvalidInput, match="not a file, folder or symlink"):
        clone_tree(src, tmp_path / "copy.pvm")
    _no_leftovers(tmp_path, "vm.pvm")


def test_data_ranges(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _sparse_file(path, 32 * MiB, {0: b"a" * 10, 8 * MiB: b"b" * 5000, 32 * MiB - 1: b"z"})
    fd = os.open(path, os.O_RDONLY)
    try:
        ranges = data_ranges(fd, 32 * MiB)
        assert data_ranges(fd, 0) == []
    finally:
        os.close(fd)
    assert ranges == sorted(ranges)

    def covered(pos: int) -> bool:
        return any(start <= pos < start + length for start, length in ranges)

    for pos in (0, 9, 8 * MiB, 8 * MiB + 4999, 32 * MiB - 1):
        assert covered(pos), pos
    assert not covered(4 * MiB) and not covered(20 * MiB)
    assert sum(length for _, length in ranges) <= 1 * MiB
    assert all(start + length <= 32 * MiB for start, length in ranges)

    dense = tmp_path / "dense"
    dense.write_bytes(b"x" * 100_000)
    fd = os.open(dense, os.O_RDONLY)
    try:
        assert data_ranges(fd, 100_000) == [(0, 100_000)]
    finally:
        os.close(fd)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def test_reflink_on_xfs_is_instant_and_free(tmp_path: Path) -> None:
    assert sys.platform.startswith("linux"), "the reflink test needs Linux (XFS on a loop device)"
    assert os.geteuid() == 0, "the reflink test needs root to loop-mount an XFS image"
    assert shutil.which("mkfs.xfs"), "mkfs.xfs is missing: apt-get install xfsprogs"
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(300 * MiB)
    _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    mnt.mkdir()
    _run("mount", "-o", "loop", str(image), str(mnt))
    try:
        src = mnt / "vm.pvm"
        src.mkdir()
        block = os.urandom(1 * MiB)
        with open(src / "disk.hds", "wb") as f:
            for _ in range(64):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        (src / "config.pvs").write_text("<ParallelsVirtualMachine/>\n")
        assert supports_reflink(mnt)
        free_before = shutil.disk_usage(mnt).free

        started = time.perf_counter()
        method = clone_tree(src, mnt / "copy.pvm")
        elapsed = time.perf_counter() - started

        assert method == "reflink"
        assert elapsed < 0.1, f"a reflink clone of 64 MiB took {elapsed:.3f} s"
        assert free_before - shutil.disk_usage(mnt).free < 8 * MiB, "the clone did not share its blocks"
        digest = hashlib.sha256((src / "disk.hds").read_bytes()).hexdigest()
        assert hashlib.sha256((mnt / "copy.pvm" / "disk.hds").read_bytes()).hexdigest() == digest
        # across filesystems there is no sharing: the same call falls back to a sparse copy
        assert clone_tree(src, tmp_path / "outside.pvm") == "sparse-copy"
        assert hashlib.sha256((tmp_path / "outside.pvm" / "disk.hds").read_bytes()).hexdigest() == digest
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)

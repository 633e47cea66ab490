"""Whether a folder on disk is exactly the bundle a pack index describes, without reading a file.

The cache re-checks a hit this way (paths, types, sizes, symlink targets, and each file's
``(size, mtime_ns)`` fingerprint taken when it was committed), and measures a committed bundle.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.pack import DIR, FILE, SYMLINK, PackIndex

__all__ = ["check_tree", "measure", "walk"]


def walk(folder: Path) -> dict[str, os.stat_result]:
    """Every path under ``folder`` (relative, POSIX) with its lstat; symlinks are not followed."""
    found: dict[str, os.stat_result] = {}
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(folder / prefix if prefix else folder) as it:
            for child in it:
                rel = f"{prefix}{child.name}"
                st = child.stat(follow_symlinks=False)
                found[rel] = st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(rel + "/")
    return found


def check_tree(folder: Path, index: PackIndex, fingerprint: dict[str, list[int]] | None) -> str | None:
    """Why ``folder`` is not the bundle ``index`` describes, or None. No file is read: paths, types,
    sizes, symlink targets and (given a fingerprint) each file's ``(size, mtime_ns)``."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return "not a folder"
        tree = walk(folder)
    except FileNotFoundError:
        return "the folder is missing"
    except OSError as exc:
        return f"cannot list it ({exc.strerror})"
    expected = {f.path for f in index.files}
    extra = sorted(set(tree) - expected)
    if extra:
        return f"{extra[0]!r} is not part of the VM"
    for f in index.files:
        st = tree.get(f.path)
        if st is None:
            return f"{f.path!r} is missing"
        if f.type == DIR and not stat.S_ISDIR(st.st_mode):
            return f"{f.path!r} is not a folder"
        if f.type == SYMLINK:
            if not stat.S_ISLNK(st.st_mode):
                return f"{f.path!r} is not a symlink"
            try:
                if os.readlink(folder / f.path) != f.target:
                    return f"{f.path!r} points elsewhere"
            except OSError:
                return f"{f.path!r} cannot be read"
        if f.type == FILE:
            if not stat.S_ISREG(st.st_mode):
                return f"{f.path!r} is not a regular file"
            if st.st_size != f.size:
                return f"{f.path!r} has {st.st_size} bytes instead of {f.size}"
            if fingerprint is not None and fingerprint.get(f.path) != [st.st_size, st.st_mtime_ns]:
                return f"{f.path!r} was modified"
    return None


def measure(folder: Path, index: PackIndex) -> tuple[dict[str, list[int]], int]:
    """The ``(size, mtime_ns)`` of every file, and the disk bytes of the whole tree."""
    tree = walk(folder)
    fingerprint = {f.path: [tree[f.path].st_size, tree[f.path].st_mtime_ns] for f in index.files if f.type == FILE}
    disk = os.lstat(folder).st_blocks * 512 + sum(st.st_blocks * 512 for st in tree.values())
    return fingerprint, disk

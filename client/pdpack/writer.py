"""Writing a pack: a ``.pvm``/``.macvm`` bundle streamed into one tar (or tar.gz), holes left out.

The layout and every choice where the original is silent are in docs/pdpack-format.md.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

from client.clone import data_ranges
from client.packer import scan_tree
from client.pdpack.tarfmt import IO_BUF, entry_header, file_header, gzip_level
from core.errors import Conflict
from core.pack import DIR, FILE, SYMLINK
from core.pdpack_meta import ContentItem

__all__ = ["PackStats", "rfc3339", "write_pack"]

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class PackStats:
    """What ``write_pack`` wrote: ``checksum`` is the original's (hex MD5 of the pack bytes)."""

    pack_size: int
    size: int  # bytes of the bundle's regular files (the original's "size")
    data_bytes: int  # of those, the bytes actually stored (holes left out)
    files: int
    folders: int
    symlinks: int
    sparse_files: int
    compressed: bool
    level: int | None
    checksum: str
    sha256: str
    contents: tuple[ContentItem, ...]


class _HashingWriter:
    """Counts and hashes every byte on its way to ``out``, so the checksum costs no second read."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.sha256.update(data)
        self._out.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self._out.flush()


class _SegmentReader:
    """``read(n)`` for ``TarFile.addfile``: ``prefix`` (a sparse map), then ranges of an open file.

    A short read means the file shrank while being packed: a pack of a VM that is still writing to its
    disk would not boot, so that stops the export.
    """

    def __init__(self, fd: int, rel: str, segments: list[tuple[int, int]], prefix: bytes = b"") -> None:
        self._fd, self._rel, self._segments, self._prefix = fd, rel, segments, prefix
        self._index, self._done = 0, 0

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        want = size
        if self._prefix and want:
            parts.append(self._prefix[:want])
            self._prefix = self._prefix[want:]
            want -= len(parts[-1])
        while want and self._index < len(self._segments):
            offset, length = self._segments[self._index]
            step = min(want, length - self._done)
            piece = os.pread(self._fd, step, offset + self._done)
            if not piece:
                raise Conflict(f"{self._rel} shrank while being packed; stop the VM and try again")
            parts.append(piece)
            want -= len(piece)
            self._done += len(piece)
            if self._done == length:
                self._index, self._done = self._index + 1, 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


def write_pack(
    bundle: Path, out: BinaryIO, *, compress: bool, level: str = "default", sparse: bool = True
) -> PackStats:
    """Stream ``bundle`` (a ``.pvm``/``.macvm`` folder) into ``out`` as a pack, never holding a file in memory.

    ``level`` is the PDFile's name (``COMPRESSION_LEVELS``) and applies when ``compress`` is set. The
    bundle must not change while it is packed: a file that shrinks, grows or is touched stops it.
    """
    gz_level = gzip_level(level) if compress else None
    entries = scan_tree(bundle)
    sink = _HashingWriter(out)
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=gz_level, mtime=0) if gz_level is not None else None
    counts = {"files": 0, "folders": 0, "symlinks": 0, "sparse": 0, "size": 0, "data": 0}
    contents: list[ContentItem] = []
    try:
        target = cast(BinaryIO, gz if gz is not None else sink)
        with tarfile.TarFile(
            fileobj=target, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", copybufsize=IO_BUF
        ) as tar:
            for entry in entries:
                path = bundle / entry.path
                folder, _, base = entry.path.rpartition("/")
                where = "/" + folder
                st = os.lstat(path)
                if entry.type == DIR:
                    tar.addfile(entry_header(entry.path, tarfile.DIRTYPE, st))
                    counts["folders"] += 1
                    contents.append(ContentItem(name=base, path=where, is_dir=True))
                elif entry.type == SYMLINK:
                    info = entry_header(entry.path, tarfile.SYMTYPE, st)
                    info.linkname = entry.target or ""
                    tar.addfile(info)
                    counts["symlinks"] += 1
                elif entry.type == FILE:
                    size, stored, was_sparse = _add_file(tar, path, entry.path, st, sparse)
                    counts["files"] += 1
                    counts["size"] += size
                    counts["data"] += stored
                    counts["sparse"] += was_sparse
                    stamp = rfc3339(st.st_mtime_ns)
                    contents.append(ContentItem(name=base, path=where, size=size, created_at=stamp, updated_at=stamp))
    except FileNotFoundError as exc:
        raise Conflict(f"a file vanished while {bundle} was being packed; stop the VM and try again") from exc
    finally:
        if gz is not None:
            gz.close()  # writes the gzip trailer; the caller's ``out`` stays open
    sink.flush()
    return PackStats(
        pack_size=sink.count,
        size=counts["size"],
        data_bytes=counts["data"],
        files=counts["files"],
        folders=counts["folders"],
        symlinks=counts["symlinks"],
        sparse_files=counts["sparse"],
        compressed=gz is not None,
        level=gz_level,
        checksum=sink.md5.hexdigest(),
        sha256=sink.sha256.hexdigest(),
        contents=tuple(contents),
    )


def _add_file(tar: tarfile.TarFile, path: Path, rel: str, st: os.stat_result, sparse: bool) -> tuple[int, int, bool]:
    """One regular file: ``(size, bytes stored, written as sparse)``."""
    fd = os.open(path, _READ_FLAGS)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Conflict(f"{rel} changed while being packed; stop the VM and try again")
        size = before.st_size
        ranges = data_ranges(fd, size) if sparse else [(0, size)] if size else []
        stored = sum(length for _, length in ranges)
        info, prefix = file_header(rel, before, ranges, tar.offset)
        tar.addfile(info, cast(BinaryIO, _SegmentReader(fd, rel, ranges, prefix)))
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (size, before.st_mtime_ns):
            raise Conflict(f"{rel} changed while being packed; stop the VM and try again")
        return size, stored, stored < size
    finally:
        os.close(fd)


def rfc3339(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"

"""Tar and gzip details of the pack format: headers, PAX "GNU sparse 1.0" members, modes, compression levels.

Why each choice is what it is (and which readers were checked) is in docs/pdpack-format.md.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from typing import Literal

from core.errors import InvalidInput

__all__ = [
    "COMPRESSION_LEVELS",
    "GZIP_MAGIC",
    "IO_BUF",
    "PRIVILEGED",
    "SparseTarInfo",
    "entry_header",
    "file_header",
    "gzip_level",
    "member_kind",
    "safe_mode",
]

log = logging.getLogger("pdcat.pdpack")

# The PDFile's COMPRESS_PACK_LEVEL names, as ``ConvertCompressRatioFromString`` maps them to gzip levels.
COMPRESSION_LEVELS: Mapping[str, int] = {
    "best_speed": 1,
    "balanced": 5,
    "best_compression": 9,
    "no_compression": 0,
    "default": 6,  # Go's gzip.DefaultCompression (-1) is flate level 6
}
GZIP_MAGIC = b"\x1f\x8b"
IO_BUF = 1024 * 1024
_GO_SETUID, _GO_SETGID = 1 << 23, 1 << 22  # Go's os.ModeSetuid / os.ModeSetgid, as int64(info.Mode()) writes them
PRIVILEGED = stat.S_ISUID | stat.S_ISGID | _GO_SETUID | _GO_SETGID


def gzip_level(level: str) -> int:
    try:
        return COMPRESSION_LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise InvalidInput(
            f"unknown compression level {str(level)[:40]!r}: use one of {', '.join(COMPRESSION_LEVELS)}"
        ) from None


class SparseTarInfo(tarfile.TarInfo):
    """A PAX "GNU sparse 1.0" member: the real name and size live in ``GNU.sparse.*`` records.

    The stored size (map + data) goes into the ustar header itself, as base-256 when it exceeds 8 GiB:
    a PAX ``size`` record would make Python's own reader mis-place the next header.
    """

    def tobuf(
        self,
        format: Literal[0, 1, 2] | None = tarfile.PAX_FORMAT,
        encoding: str | None = "utf-8",
        errors: str = "surrogateescape",
    ) -> bytes:
        stored, self.size = self.size, 0
        try:
            buf = bytearray(super().tobuf(format, encoding, errors))
        finally:
            self.size = stored
        header = len(buf) - tarfile.BLOCKSIZE
        # octal while it fits (8 GiB), else the base-256 form every reader knows (GNU, star, Go, Python)
        fits = stored < 8**11
        buf[header + 124 : header + 136] = b"%011o\x00" % stored if fits else b"\x80" + stored.to_bytes(11, "big")
        buf[header + 148 : header + 156] = b" " * 8
        checksum = sum(buf[header : header + tarfile.BLOCKSIZE])
        buf[header + 148 : header + 155] = b"%06o\x00" % checksum
        return bytes(buf)


def entry_header(name: str, kind: bytes, st: os.stat_result) -> tarfile.TarInfo:
    """The header of a folder or symlink: its mode (symlinks 0777) and mtime, no owner."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o777 if kind == tarfile.SYMTYPE else safe_mode(name, st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def file_header(
    rel: str, st: os.stat_result, ranges: Sequence[tuple[int, int]], offset: int
) -> tuple[tarfile.TarInfo, bytes]:
    """The header of one regular file of ``st.st_size`` bytes whose data lies in ``ranges``, and the bytes
    that go before its data: the sparse map when ``ranges`` leave holes, else nothing.

    ``offset`` is where the member starts in the tar; it makes the placeholder name of a sparse member
    unique, as GNU tar does (``GNUSparseFile.0/...``).
    """
    size = st.st_size
    stored = sum(length for _, length in ranges)
    prefix = b""
    if stored < size:
        info: tarfile.TarInfo = SparseTarInfo(f"GNUSparseFile.0/f{offset}"[:99])
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": rel,
            "GNU.sparse.realsize": str(size),
        }
        # GNU tar ends the map with an empty run at the real size when the file ends in a hole
        runs = list(ranges) if ranges and ranges[-1][0] + ranges[-1][1] == size else [*ranges, (size, 0)]
        text = f"{len(runs)}\n" + "".join(f"{off}\n{length}\n" for off, length in runs)
        prefix = text.encode("ascii")
        prefix += bytes(-len(prefix) % tarfile.BLOCKSIZE)
        info.size = len(prefix) + stored
    else:
        info = tarfile.TarInfo(rel)
        info.size = size
    info.type = tarfile.REGTYPE
    info.mode = safe_mode(rel, st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, prefix


def safe_mode(name: str, mode: int) -> int:
    """Permission bits only: a pack carrying setuid bits would be refused by every careful reader."""
    if mode & (stat.S_ISUID | stat.S_ISGID):
        log.warning("%s has the setuid/setgid bit; it is not packed", name)
    return stat.S_IMODE(mode) & 0o777


def member_kind(member: tarfile.TarInfo) -> str:
    """What a member that is not a folder, file or link is, in words."""
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"member of type {member.type!r}"

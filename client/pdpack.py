"""The original product's pack format: ``<id>/<id>-<arch>-<version>.pdpack`` plus its ``.meta`` JSON.

pdcat's own format is chunked and content-addressed (``client.packer``); this module reads and writes
what Parallels' ``prl-devops-service`` (Go) puts in a storage provider, so ``pdcat`` can pull a VM the
original tools pushed and export one they can pull.

What the original does, and where it says so (repository ``Parallels/prl-devops-service``):

* Keys. ``src/catalog/main.go`` (``getPackFilename``, ``getMetaFilename``, ``GenerateManifestContent``)
  names both files ``NormalizeString("<catalog_id>-<arch>-<version>")`` plus ``.pdpack`` / ``.meta``, in
  the folder ``<catalog_id>`` under the provider's root (``src/catalog/push.go``; ``src/catalog/import.go``
  lower-cases that folder). ``NormalizeString`` (``src/helpers/strings.go``) turns `` ,:;()[]{}'"/\\|<>=+*&^%$#@!`~?``
  into ``_``, trims and lower-cases.
* The pack. ``compressMachine`` (``src/catalog/main.go``) walks the bundle folder with ``filepath.Walk``
  and writes one tar member per *regular file* (no folder entries, no links), named
  ``strings.TrimPrefix(filePath, bundlePath)`` -- so ``/config.pvs``, with a leading slash, unless the
  path was given with a trailing one -- with ``Mode: int64(info.Mode())``, ``Size`` and nothing else
  (so mtime 0, uid/gid 0, USTAR). The tar root is the bundle's *contents*, not the ``.pvm`` folder:
  pull (``src/catalog/pull.go``) unpacks into ``<dest>/<machine>.<type>``. With ``CompressPack`` the
  tar goes through ``gzip.NewWriterLevel``; the levels come from ``ConvertCompressRatioFromString``
  (``src/helpers``): ``best_speed`` 1, ``balanced`` 5, ``best_compression`` 9, ``no_compression`` 0,
  ``default`` -1 (flate's 6). Readers sniff, they do not trust the flag: ``src/compressor/decompress.go``
  treats ``1f 8b`` as tar.gz and ``ustar`` at 257 as tar, and pull unpacks when ``is_compressed`` *or*
  the file ends in ``.pdpack``. Their reader joins each name under the destination
  (``SanitizeArchivePath``), so ``/config.pvs`` means ``<dest>/config.pvs``.
* The ``.meta``. It is the ``VirtualMachineCatalogManifest`` struct marshalled with ``json.MarshalIndent``
  (``src/catalog/models/virtual_machine_manifest.go``; ``push.go`` clears ``provider`` first): ``id``,
  ``catalog_id``, ``description``, ``version``, ``name``, ``architecture``, ``path``, ``pack_path``,
  ``metadata_path``, ``type`` (``pvm``/``macvm``), ``size`` (bytes of the bundle's files), ``pack_size``
  (bytes of the pack), ``is_compressed``, ``pack_relative_path``, ``compressed_checksum`` (hex MD5 of
  the pack file, ``helpers.GetFileMD5Checksum``), ``required_roles``, ``required_claims``, ``tags``,
  ``created_at``/``updated_at`` (RFC 3339, UTC), ``virtual_machine_contents`` and ``pack_contents``
  (items ``{is_dir, name, path, hash, size, created_at, updated_at, deleted_at}``), ``minimum_requirements``
  (``{cpu, memory, disk}``, ``src/catalog/models/catalog_manifest_provider.go``), taint/revoke fields
  and cache fields.

The key naming and the ``.meta`` model (``PackMeta``, ``pack_key``, ``meta_key``...) live in
``core.pdpack_meta``, because the catalog service reads them too (``POST /catalog/import`` with
``format: "pdpack"``); they are re-exported here under the same names.

Not confirmed, and chosen as the most plausible: ``import_vm.go`` stores ``size``/``pack_size`` in MiB and
takes ``compressed_checksum`` from the provider (S3 ETag, local SHA-1), so neither size is trusted here and
the checksum is verified by its shape (32 hex: MD5, 40: SHA-1, 64: SHA-256; anything else, e.g. a
multipart ETag ``<hex>-<n>``, cannot be checked and is reported as unverified). A newer ``main.go`` also
sets ``CompressedSize``/``CompressedRatio``, whose JSON names were not found: unknown fields are kept
verbatim (``PackMeta.extra``) and written back, never dropped.

Choices where the original is silent or unsafe:

* Writing: members are relative (``config.pvs``), folders and in-bundle symlinks are included, modes and
  mtimes are kept, uid/gid are 0 with no user names; every Go reader version shown above reads that.
  Files with holes are written as PAX "GNU sparse 1.0" members (Go's ``archive/tar`` and Python's
  ``tarfile`` read those as plain files, GNU tar and bsdtar restore the holes), so a 64 GiB disk image
  holding 5 GiB costs 5 GiB in an uncompressed pack and gzip never churns through the holes.
  ``sparse=False`` writes every byte instead. Checked by hand with a Go 1.19 program doing what
  ``compressMachine``/``processTarFile`` do: it reads our packs, sparse ones included, byte for byte
  (it skips symlinks, as the original's reader does), and we read its packs. The original's writer
  itself cannot pack a bundle holding a symlink (it copies the target into a header sized for the link).
* Reading is streamed (one pass, no temp copy of the pack) and refuses, naming the member: ``..``
  segments, names that are absolute in a pack whose other names are not (a *leading* slash on every
  member is the original writer's own convention and means "relative to the bundle", exactly as its
  reader and tarfile's ``data`` filter take it; ``//`` never), links that are absolute or leave the
  bundle, hard links to anything but an earlier file, members inside a symlink or a file, duplicates,
  device files, FIFOs and other special members, setuid/setgid bits (also Go's ``os.ModeSetuid`` bit),
  names longer than the filesystem allows, more bytes to write than ``max_bytes`` (default: the free
  space; zeros are never written, so holes the original stores as zeros do not count), declared sizes
  past 64 TiB, and truncated or corrupt tar/gzip streams (the gzip CRC is checked, which tarfile's own
  ``r|gz`` never does). tarfile's ``data_filter`` runs on every member as a second opinion. Symlinks
  are created only after every file is written, so nothing is ever written through one. Runs of zeros
  are not written, so unpacked disk images stay sparse also when the pack stored their holes as zeros
  (as the original's packs do).
* The bundle is unpacked into a hidden ``.<name>.pdcat-partial-*`` folder next to the destination and
  renamed into place only when every member and the checksum passed; on any failure it is removed.
  A pack holding a single ``*.pvm``/``*.macvm`` folder at its root (made by hand with ``tar``) is
  unpacked as that folder's contents.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import posixpath
import secrets
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, cast

from client.clone import data_ranges, remove_tree
from client.packer import data_runs, scan_tree
from core.errors import Conflict, InvalidInput, NotFound, PdcatError, Unprocessable
from core.identity import normalize_architecture, normalize_version
from core.manifest import MinimumRequirements, parse_description, parse_roles, parse_tags
from core.pack import DIR, FILE, MAX_DEPTH, MAX_FILES, SYMLINK
from core.pdpack_meta import (
    ContentItem,
    MinimumSpec,
    PackMeta,
    catalog_folder,
    meta_key,
    pack_file_key,
    pack_key,
    pack_name,
)
from core.pdpack_meta import checksum_algorithm as _checksum_algorithm

__all__ = [
    "COMPRESSION_LEVELS",
    "ChecksumMismatch",
    "ContentItem",
    "MinimumSpec",
    "PackMeta",
    "PackRejected",
    "PackStats",
    "PackStorage",
    "UnpackStats",
    "catalog_folder",
    "export_pack",
    "import_pack",
    "import_pack_with_stats",
    "meta_key",
    "pack_key",
    "pack_name",
    "unpack_pack",
    "write_pack",
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
_GZIP_MAGIC = b"\x1f\x8b"
_IO_BUF = 1024 * 1024
_ZERO = bytes(_IO_BUF)
_ZERO_RUN = 64 * 1024  # zero runs this long (aligned) inside written data are left as holes
_MAX_TRAILER = 16 * 1024 * 1024  # bytes tolerated after the tar's end-of-archive marker (record padding)
_MAX_APPARENT = 64 * 1024**4  # 64 TiB of declared file sizes: far past any VM, well short of a "bomb" header
_GO_SETUID, _GO_SETGID = 1 << 23, 1 << 22  # Go's os.ModeSetuid / os.ModeSetgid, as int64(info.Mode()) writes them
_PRIVILEGED = stat.S_ISUID | stat.S_ISGID | _GO_SETUID | _GO_SETGID
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_BUNDLE_SUFFIXES = (".pvm", ".macvm")


# ---- errors ------------------------------------------------------------------------------------
class PackRejected(InvalidInput):
    """The pack holds something unsafe, or is not a readable tar/tar.gz; nothing was left behind."""


class ChecksumMismatch(Unprocessable):
    """The pack's bytes do not match the checksum its ``.meta`` records; nothing was left behind."""


# ---- storage port -------------------------------------------------------------------------------
class PackStorage(Protocol):
    """The part of ``client.byo.providers.Storage`` this module uses (keys are ``/`` paths); any
    ``open_storage(...)`` result fits, and so does a small test double."""

    def put_file(self, key: str, path: Path) -> None: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


# ---- writing -------------------------------------------------------------------------------------
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


class _SparseTarInfo(tarfile.TarInfo):
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


def write_pack(
    bundle: Path, out: BinaryIO, *, compress: bool, level: str = "default", sparse: bool = True
) -> PackStats:
    """Stream ``bundle`` (a ``.pvm``/``.macvm`` folder) into ``out`` as a pack, never holding a file in memory.

    ``level`` is the PDFile's name (``COMPRESSION_LEVELS``) and applies when ``compress`` is set. The
    bundle must not change while it is packed: a file that shrinks, grows or is touched stops it.
    """
    gz_level = _gzip_level(level) if compress else None
    entries = scan_tree(bundle)
    sink = _HashingWriter(out)
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=gz_level, mtime=0) if gz_level is not None else None
    counts = {"files": 0, "folders": 0, "symlinks": 0, "sparse": 0, "size": 0, "data": 0}
    contents: list[ContentItem] = []
    try:
        target = cast(BinaryIO, gz if gz is not None else sink)
        with tarfile.TarFile(
            fileobj=target, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", copybufsize=_IO_BUF
        ) as tar:
            for entry in entries:
                path = bundle / entry.path
                folder, _, base = entry.path.rpartition("/")
                where = "/" + folder
                st = os.lstat(path)
                if entry.type == DIR:
                    tar.addfile(_tarinfo(entry.path, tarfile.DIRTYPE, st))
                    counts["folders"] += 1
                    contents.append(ContentItem(name=base, path=where, is_dir=True))
                elif entry.type == SYMLINK:
                    info = _tarinfo(entry.path, tarfile.SYMTYPE, st)
                    info.linkname = entry.target or ""
                    tar.addfile(info)
                    counts["symlinks"] += 1
                elif entry.type == FILE:
                    size, stored, was_sparse = _add_file(tar, path, entry.path, st, sparse)
                    counts["files"] += 1
                    counts["size"] += size
                    counts["data"] += stored
                    counts["sparse"] += was_sparse
                    stamp = _rfc3339(st.st_mtime_ns)
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


def _gzip_level(level: str) -> int:
    try:
        return COMPRESSION_LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise InvalidInput(
            f"unknown compression level {str(level)[:40]!r}: use one of {', '.join(COMPRESSION_LEVELS)}"
        ) from None


def _tarinfo(name: str, kind: bytes, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o777 if kind == tarfile.SYMTYPE else _safe_mode(name, st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _safe_mode(name: str, mode: int) -> int:
    """Permission bits only: a pack carrying setuid bits would be refused by every careful reader."""
    if mode & (stat.S_ISUID | stat.S_ISGID):
        log.warning("%s has the setuid/setgid bit; it is not packed", name)
    return stat.S_IMODE(mode) & 0o777


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
        if stored < size:
            info: tarfile.TarInfo = _SparseTarInfo(f"GNUSparseFile.0/f{tar.offset}"[:99])
            info.pax_headers = {
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": rel,
                "GNU.sparse.realsize": str(size),
            }
            # GNU tar ends the map with an empty run at the real size when the file ends in a hole
            runs = ranges if ranges and ranges[-1][0] + ranges[-1][1] == size else [*ranges, (size, 0)]
            text = f"{len(runs)}\n" + "".join(f"{off}\n{length}\n" for off, length in runs)
            prefix = text.encode("ascii")
            prefix += bytes(-len(prefix) % tarfile.BLOCKSIZE)
            info.size = len(prefix) + stored
            reader = _SegmentReader(fd, rel, ranges, prefix)
        else:
            info = tarfile.TarInfo(rel)
            info.size = size
            reader = _SegmentReader(fd, rel, ranges)
        info.type = tarfile.REGTYPE
        info.mode = _safe_mode(rel, before.st_mode)
        info.mtime = int(before.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, cast(BinaryIO, reader))
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (size, before.st_mtime_ns):
            raise Conflict(f"{rel} changed while being packed; stop the VM and try again")
        return size, stored, stored < size
    finally:
        os.close(fd)


def _rfc3339(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


# ---- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnpackStats:
    dest: Path
    files: int
    folders: int
    symlinks: int
    hardlinks: int
    size: int  # bytes of the unpacked files (their apparent sizes)
    data_bytes: int  # bytes actually written (holes and zero runs left out)
    pack_bytes: int  # bytes of the pack read
    compressed: bool  # the pack was gzip
    checksum: str  # of the pack bytes, with checksum_algorithm
    checksum_algorithm: str
    checksum_verified: bool  # False when no checksum was given, or its shape names no algorithm we know
    # (True also when only ``sha256`` was given and matched)


class _Source:
    """The raw pack: hashed and counted as it is read, with a look at the first bytes."""

    def __init__(self, stream: BinaryIO, algorithm: str, *, sha256: bool = False) -> None:
        self._stream = stream
        self._head = b""
        self.hash = hashlib.new(algorithm, usedforsecurity=False)
        self.sha256 = hashlib.sha256() if sha256 and algorithm != "sha256" else None
        self.count = 0

    def peek(self, size: int) -> bytes:
        while len(self._head) < size:
            more = self._stream.read(size - len(self._head))
            if not more:
                break
            self._account(more)
            self._head += more
        return self._head[:size]

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data, self._head = (self._head, b"") if size < 0 else (self._head[:size], self._head[size:])
            return data
        data = self._stream.read(size if size >= 0 else _IO_BUF)
        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        self.hash.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.count += len(data)


def unpack_pack(
    stream: BinaryIO,
    dest: Path,
    *,
    compressed: bool | None,
    checksum: str | None = None,
    sha256: str | None = None,
    max_bytes: int | None = None,
) -> UnpackStats:
    """Unpack a pack read from ``stream`` into ``dest`` (the bundle folder, which must not exist yet).

    ``compressed``: True requires gzip, False a plain tar, None sniffs (as the original does; its
    ``is_compressed`` flag is not reliable for that). ``checksum`` is the ``.meta``'s
    ``compressed_checksum`` (MD5 in the original: it catches corruption, not tampering); ``sha256``,
    when the caller knows it (``PackStats.sha256`` of a pdcat export, recorded by a catalog), is verified
    too. ``max_bytes`` caps the bytes written (default: the free space where ``dest`` goes; zeros are
    not written, so the holes the original stores as zeros do not count). On any failure nothing is
    left behind.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise Conflict(f"{dest} already exists; pull into a new path")
    parent = dest.parent
    if not parent.is_dir():
        raise InvalidInput(f"{parent} is not a folder")
    expected = (checksum or "").strip().lower()
    algorithm = _checksum_algorithm(expected)
    strong = (sha256 or "").strip().lower()
    if strong and _checksum_algorithm(strong) != "sha256":
        raise InvalidInput("sha256 must be 64 hexadecimal digits")
    if expected and algorithm is None:
        log.warning("the pack's checksum %r has no known shape (a multipart ETag?); not verified", expected[:80])
    token = secrets.token_hex(4)
    partial = parent / f".{dest.name}.pdcat-partial-{token}"
    hoisted = parent / f".{dest.name}.pdcat-partial-{token}-b"
    os.mkdir(partial, 0o700)
    try:
        source = _Source(stream, algorithm or "md5", sha256=bool(strong))
        budget = max_bytes if max_bytes is not None else _free_bytes(partial)
        counts = _Extraction(partial, budget).run(source, compressed)
        actual = source.hash.hexdigest()
        if algorithm is not None and actual != expected:
            raise ChecksumMismatch(
                f"the pack does not match its .meta: {algorithm} {actual} instead of {expected}; "
                "it is corrupt or was replaced"
            )
        actual_strong = (source.sha256 or source.hash).hexdigest() if strong else ""
        if actual_strong != strong:
            raise ChecksumMismatch(
                f"the pack's sha256 is {actual_strong}, not the recorded {strong}; it is corrupt or was replaced"
            )
        final = partial
        inner = _single_bundle_folder(partial)
        if inner is not None:
            os.rename(inner, hoisted)
            os.rmdir(partial)
            final = hoisted
        if os.path.lexists(dest):
            raise Conflict(f"{dest} appeared while the pack was being unpacked")
        os.rename(final, dest)
    except BaseException:
        remove_tree(partial)
        remove_tree(hoisted)
        raise
    return UnpackStats(
        dest=dest,
        files=counts.files,
        folders=counts.folders,
        symlinks=counts.symlinks,
        hardlinks=counts.hardlinks,
        size=counts.size,
        data_bytes=counts.data_bytes,
        pack_bytes=source.count,
        compressed=counts.compressed,
        checksum=source.hash.hexdigest(),
        checksum_algorithm=source.hash.name,
        checksum_verified=algorithm is not None or bool(strong),
    )


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _single_bundle_folder(partial: Path) -> Path | None:
    """The one ``*.pvm``/``*.macvm`` folder a hand-made pack may hold at its root, if that is all it holds."""
    with os.scandir(partial) as it:
        children = list(it)
    if len(children) != 1:
        return None
    only = children[0]
    if only.is_dir(follow_symlinks=False) and only.name.lower().endswith(_BUNDLE_SUFFIXES):
        return Path(only.path)
    return None


class _Extraction:
    """One pass over the tar stream; everything lands under ``root`` (the hidden partial folder)."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self.files = self.folders = self.symlinks = self.hardlinks = 0
        self.size = self.data_bytes = 0
        self.compressed = False
        self._rooted: bool | None = None  # whether member names carry the original's leading "/"
        self._seen: set[str] = set()
        self._regular: set[str] = set()
        self._dirs: set[str] = set()  # folders made so far, also the ones made as parents of a member
        self._links: dict[str, str] = {}
        self._dir_attrs: dict[str, tuple[int, float]] = {}
        self._root_mode: int | None = None
        self._count = 0
        try:
            self._name_max = os.pathconf(root, "PC_NAME_MAX")
            self._path_max = os.pathconf(root, "PC_PATH_MAX")
        except (OSError, ValueError):
            self._name_max, self._path_max = 255, 4096
        self._root_bytes = len(os.fsencode(str(root)))

    def run(self, source: _Source, compressed: bool | None) -> _Extraction:
        is_gzip = source.peek(2) == _GZIP_MAGIC
        if compressed is True and not is_gzip:
            raise PackRejected("the pack is not gzip-compressed, although a compressed pack was expected")
        if compressed is False and is_gzip:
            raise PackRejected("the pack is gzip-compressed, although a plain tar was expected")
        self.compressed = is_gzip
        # gzip is undone here rather than by tarfile ("r|gz"), whose stream reader never checks the CRC
        reader: Any = gzip.GzipFile(fileobj=cast(BinaryIO, source), mode="rb") if is_gzip else source
        last = ""  # the member being read; the byte count says where the stream itself broke

        def where() -> str:
            return f"{source.count} bytes into the pack" + (f", in or after member {last[:120]!r}" if last else "")

        try:
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_IO_BUF, encoding="utf-8") as tar:
                for member in tar:
                    last = member.name
                    self._member(tar, member)
            self._drain(reader)
            if is_gzip:
                while source.read(_IO_BUF):  # bytes after the gzip stream (GzipFile has read to EOF)
                    pass
        except PdcatError:
            raise
        except EOFError as exc:
            raise PackRejected(f"the pack is truncated: its gzip stream ends early ({where()})") from exc
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise PackRejected(f"the pack is corrupt: gzip says {exc} ({where()})") from exc
        except tarfile.TarError as exc:
            if "end of data" in str(exc) or "truncated" in str(exc):
                raise PackRejected(f"the pack is truncated ({where()})") from exc
            raise PackRejected(f"the pack is not a readable tar archive ({where()}): {exc}") from exc
        except OSError as exc:
            raise PdcatError(f"could not unpack the pack ({where()}): {exc.strerror or exc}") from exc
        self._finish()
        return self

    # -- members --
    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        raw = member.name
        self._count += 1
        if self._count > MAX_FILES:
            raise PackRejected(f"the pack holds more than {MAX_FILES} members; refused at {raw[:120]!r}")
        name = self._path(raw, member)
        if name is None:  # the bundle folder itself ("." / "./" / "/")
            if not member.isdir():
                raise PackRejected(f"member {raw[:120]!r} has no name")
            self._root_mode = member.mode
            return
        if member.mode & _PRIVILEGED:
            raise PackRejected(f"member {raw[:120]!r} has the setuid/setgid bit; refused")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise PackRejected(
                f"member {raw[:120]!r} is a {_kind(member)}; a pack may hold only folders, files and links"
            )
        if name in self._seen:
            raise PackRejected(f"member {raw[:120]!r} appears twice in the pack")
        self._check_parents(raw, name)
        if not member.isdir() and name in self._dirs:
            raise PackRejected(f"member {raw[:120]!r} clashes with a folder of the same name; refused")
        linkname = member.linkname
        if member.islnk():
            linkname = self._link_target(raw, member.linkname)
        elif member.issym():
            _check_symlink(raw, name, member.linkname)
        try:
            filtered = tarfile.data_filter(member.replace(name=name, linkname=linkname, deep=False), str(self.root))
        except tarfile.FilterError as exc:
            raise PackRejected(f"member {raw[:120]!r} is unsafe: {exc}") from exc
        self._seen.add(name)
        target = self.root / name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            self._dirs.add(name)
            self._dir_attrs[name] = (member.mode, member.mtime)
            self.folders += 1
        elif member.issym():
            self._links[name] = member.linkname  # created last, once no file is written any more
            self.symlinks += 1
        elif member.islnk():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.root / linkname, target, follow_symlinks=False)
            self._regular.add(name)
            self.hardlinks += 1
        else:
            self._file(tar, member, raw, target, filtered.mode)
            self._regular.add(name)

    def _path(self, raw: str, member: tarfile.TarInfo) -> str | None:
        """The bundle-relative path of a member name, or None for the bundle folder itself."""
        if raw.startswith("//") or "\x00" in raw:
            raise PackRejected(f"member {raw[:120]!r} has an absolute path; refused")
        rooted = raw.startswith("/")
        if raw.strip("/.") or not member.isdir():  # "./" and "/" entries do not decide the convention
            if self._rooted is None:
                self._rooted = rooted
            elif rooted != self._rooted:
                raise PackRejected(
                    f"member {raw[:120]!r} has an absolute path in a pack whose other names are "
                    f"{'absolute' if self._rooted else 'relative'}; refused"
                )
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PackRejected(f"member {raw[:120]!r} contains '..'; refused")
        if not parts:
            return None
        if len(parts) > MAX_DEPTH:
            raise PackRejected(f"member {raw[:120]!r} is nested deeper than {MAX_DEPTH} folders; refused")
        encoded = [len(os.fsencode(p)) for p in parts]
        if max(encoded) > self._name_max:
            raise PackRejected(f"member {raw[:120]!r}: a name in it is longer than {self._name_max} bytes; refused")
        if self._root_bytes + len(parts) + sum(encoded) >= self._path_max:
            raise PackRejected(f"member {raw[:120]!r}: its path is longer than this system allows; refused")
        return "/".join(parts)

    def _check_parents(self, raw: str, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self._links:
                raise PackRejected(f"member {raw[:120]!r} lies inside the symlink {prefix[:120]!r}; refused")
            if prefix in self._regular:
                raise PackRejected(f"member {raw[:120]!r} lies inside the file {prefix[:120]!r}; refused")
        self._dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def _link_target(self, raw: str, linkname: str) -> str:
        """A hard link may only point at a regular file unpacked earlier from this pack."""
        if linkname.startswith("/") and (self._rooted is not True or linkname.startswith("//")):
            raise PackRejected(f"member {raw[:120]!r} is a hard link to an absolute path; refused")
        parts = [p for p in linkname.split("/") if p not in ("", ".")]
        target = "/".join(parts)
        if ".." in parts or target not in self._regular:
            raise PackRejected(
                f"member {raw[:120]!r} is a hard link to {linkname[:120]!r}, "
                "which is not an earlier file of the pack; refused"
            )
        return target

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, raw: str, target: Path, mode: int | None) -> None:
        """Write one file. The budget counts bytes written, not declared: the original's packs store
        holes as zeros, which are never written, so a big mostly-empty disk still fits."""
        sparse = cast("list[tuple[int, int]] | None", getattr(member, "sparse", None))
        runs = list(sparse) if sparse else ([(0, member.size)] if member.size else [])
        if self.size + member.size > _MAX_APPARENT:
            raise PackRejected(f"member {raw[:120]!r} declares {member.size} bytes, past any VM's size; refused")
        if sparse and self.data_bytes + sum(length for _, length in runs) > self.budget:  # exact: fail early
            raise self._over_budget(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, _CREATE_FLAGS, 0o600)
        try:
            os.ftruncate(fd, member.size)
            src: Any = tar.fileobj  # tarfile's forward-only stream: seek() reads ahead, never back
            src.seek(member.offset_data)
            for offset, length in runs:
                written = _copy_run(src, fd, offset, length, raw, self.budget - self.data_bytes)
                if written is None:
                    raise self._over_budget(raw)
                self.data_bytes += written
            if mode is not None:
                os.fchmod(fd, mode & 0o777)
            if member.mtime > 0:  # the original writes mtime 0: "not recorded", so keep the time of unpacking
                os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.files += 1
        self.size += member.size

    def _over_budget(self, raw: str) -> PackRejected:
        return PackRejected(
            f"member {raw[:120]!r} would take the unpacked data past {self.budget} bytes "
            "(the space allowed for it); refused"
        )

    def _drain(self, reader: Any) -> None:
        """Read past the end-of-archive marker to the end, so gzip's CRC is checked and the hash is whole."""
        extra = 0
        while chunk := reader.read(_IO_BUF):
            extra += len(chunk)
            if extra > _MAX_TRAILER:
                raise PackRejected(f"the pack carries more than {_MAX_TRAILER} bytes after the end of its tar archive")

    def _finish(self) -> None:
        """Create the symlinks, check where they really lead, then apply folder modes and times."""
        real_root = os.path.realpath(self.root)
        for name, target in sorted(self._links.items()):
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, path)
            resolved = os.path.realpath(path)
            if resolved != real_root and not resolved.startswith(real_root + os.sep):
                raise PackRejected(f"symlink {name[:120]!r} resolves outside the bundle; refused")
        for name, (mode, mtime) in sorted(self._dir_attrs.items(), key=lambda kv: kv[0].count("/"), reverse=True):
            path = self.root / name
            os.chmod(path, (mode & 0o755) | 0o700)
            if mtime > 0:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.chmod(self.root, ((self._root_mode or 0o755) & 0o755) | 0o700)


def _check_symlink(raw: str, name: str, target: str) -> None:
    if not target or target.startswith("/") or "\x00" in target:
        raise PackRejected(f"member {raw[:120]!r} is a symlink to an absolute or empty path {target[:120]!r}; refused")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise PackRejected(f"member {raw[:120]!r} is a symlink leading outside the bundle ({target[:120]!r}); refused")


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"member of type {member.type!r}"


def _copy_run(src: Any, fd: int, offset: int, length: int, raw: str, limit: int) -> int | None:
    """Copy ``length`` bytes of member data to ``offset``; zero runs are skipped (they are holes already).

    Returns the bytes written, or None as soon as writing would pass ``limit``.
    """
    written = 0
    pos = offset
    remaining = length
    while remaining:
        want = min(_IO_BUF, remaining)
        chunk: bytes = src.read(want)
        if len(chunk) != want:
            raise PackRejected(f"the pack is truncated inside member {raw[:120]!r}")
        if chunk != (_ZERO if want == _IO_BUF else bytes(want)):
            view = memoryview(chunk)
            runs = list(data_runs(chunk, _ZERO_RUN))
            if written + sum(end - start for start, end in runs) > limit:
                return None
            for start, end in runs:
                done = start
                while done < end:
                    done += os.pwrite(fd, view[done:end], pos + done)
                written += end - start
        pos += want
        remaining -= want
    return written


# ---- through a storage provider -------------------------------------------------------------------
_META_FIELDS = {"description", "tags", "required_roles", "required_claims", "minimum_requirements", "vm_type"}


def export_pack(
    storage: PackStorage,
    bundle: Path,
    catalog_id: str,
    version: str,
    arch: str,
    meta_fields: Mapping[str, Any],
    *,
    compress: bool,
    level: str = "default",
    workdir: Path | None = None,
    sparse: bool = True,
    on_packed: Callable[[PackStats], None] | None = None,
) -> PackMeta:
    """Pack ``bundle``, upload it as ``pack_key(...)`` and then its ``.meta`` (last, so a ``.meta`` is
    only ever there for a complete pack). The pack is written to a hidden temp file in ``workdir``
    (default: next to the bundle), which needs room for one pack, and is always removed."""
    unknown = set(meta_fields) - _META_FIELDS
    if unknown:
        raise InvalidInput(f"unknown .meta field(s): {', '.join(sorted(unknown))}")
    bundle = Path(bundle)
    vm_type = str(meta_fields.get("vm_type") or bundle.suffix.lstrip(".").lower())
    if vm_type not in ("pvm", "macvm"):
        raise InvalidInput(f"{bundle.name} is not a .pvm or .macvm bundle (say which with vm_type)")
    name = pack_name(catalog_id, arch, version)
    folder = catalog_folder(catalog_id)
    pkey, mkey = pack_key(catalog_id, arch, version), meta_key(catalog_id, arch, version)
    minimum = meta_fields.get("minimum_requirements")
    spec = None
    if minimum is not None:
        parsed = MinimumRequirements.parse(minimum)
        spec = MinimumSpec(parsed.cpu, parsed.memory_mb, parsed.disk_mb)
    previous = _previous_meta(storage, mkey)
    tmp = (workdir or bundle.parent) / f".{name}.pdpack.pdcat-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as out:
            stats = write_pack(bundle, cast(BinaryIO, out), compress=compress, level=level, sparse=sparse)
        if on_packed is not None:
            on_packed(stats)
        storage.put_file(pkey, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    now = _rfc3339(time.time_ns())
    where = "/" + folder
    meta = PackMeta(
        catalog_id=folder,
        version=normalize_version(version, allow_latest=True),
        architecture=normalize_architecture(arch),
        id=previous.id if previous and previous.id else secrets.token_hex(32),
        name=name,
        description=parse_description(meta_fields.get("description", "")),
        vm_type=vm_type,
        path=where,
        pack_path=f"{name}.pdpack",
        metadata_path=f"{name}.meta",
        size=stats.size,
        pack_size=stats.pack_size,
        is_compressed=stats.compressed,
        checksum=stats.checksum,
        required_roles=tuple(parse_roles(meta_fields.get("required_roles", []))),
        required_claims=tuple(parse_roles(meta_fields.get("required_claims", []))),
        tags=tuple(parse_tags(meta_fields.get("tags", []))),
        created_at=previous.created_at if previous and previous.created_at else now,
        updated_at=now,
        minimum_requirements=spec,
        contents=stats.contents,
        pack_contents=(
            ContentItem(name=f"{name}.meta", path=where, created_at=now, updated_at=now),
            ContentItem(name=f"{name}.pdpack", path=where, checksum=stats.checksum, created_at=now, updated_at=now),
        ),
    )
    try:
        storage.put_bytes(mkey, meta.to_json())
    except BaseException:
        with contextlib.suppress(Exception):
            storage.delete(pkey)
        raise
    return meta


def _previous_meta(storage: PackStorage, key: str) -> PackMeta | None:
    """A re-export keeps the original ``id`` and ``created_at``, as the original's push does."""
    if not storage.exists(key):
        return None
    try:
        return PackMeta.from_json(storage.get_bytes(key))
    except InvalidInput:
        log.warning("the .meta already at %s is not readable; it is replaced", key)
        return None


def import_pack(storage: PackStorage, catalog_id: str, version: str, arch: str, dest: Path) -> Path:
    """Pull a pack the original tools pushed and unpack it as the bundle folder ``dest``; returns ``dest``."""
    _meta, stats = import_pack_with_stats(storage, catalog_id, version, arch, dest)
    return stats.dest


def import_pack_with_stats(
    storage: PackStorage,
    catalog_id: str,
    version: str,
    arch: str,
    dest: Path,
    *,
    max_bytes: int | None = None,
) -> tuple[PackMeta | None, UnpackStats]:
    """``import_pack`` that also returns the ``.meta`` it found and what the unpack did.

    The ``.meta`` is read when there is one: its checksum is then verified, and its ``pack_path`` names
    the pack file in the same folder. A lone ``.pdpack`` is unpacked unverified (logged).
    """
    mkey = meta_key(catalog_id, arch, version)
    meta = PackMeta.from_json(storage.get_bytes(mkey)) if storage.exists(mkey) else None
    if meta is None:
        log.warning("no .meta at %s: the pack cannot be verified", mkey)
    pkey = pack_file_key(meta, catalog_id, arch, version)
    if not storage.exists(pkey):
        raise NotFound(f"no pack at {pkey} in this storage")
    with storage.open_read(pkey) as stream:
        stats = unpack_pack(
            stream, Path(dest), compressed=None, checksum=meta.checksum if meta else None, max_bytes=max_bytes
        )
    return meta, stats

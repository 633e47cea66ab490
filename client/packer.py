"""File I/O for the pack format: index a VM bundle folder, and write one back from verified chunks.

Packing walks the bundle, asks the filesystem where its data lives (``SEEK_DATA``/``SEEK_HOLE``) so a
64 GiB disk image that holds 5 GiB is read as 5 GiB, and hashes every grid cell that holds data on a
small thread pool. Cells that turn out to be all zeros are dropped like holes.

Unpacking never trusts the tree it writes into: every path is opened one component at a time,
relative to the destination folder and with ``O_NOFOLLOW``, so nothing can make a write land outside
it. Symlinks are created last (``finalize_tree``), once no more file data is written, and each one is
checked against where it really resolves. Modes are applied last too, so read-only files and folders
can still be filled in first.

The pure format (grid, index, validation) lives in ``core.pack``.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import mmap
import os
import posixpath
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import zstandard

from core.errors import Conflict, InvalidInput, Unprocessable
from core.pack import (
    DEFAULT_CHUNK_SIZE,
    DIR,
    FILE,
    MAX_CHUNK_SIZE,
    MAX_FILES,
    MIN_CHUNK_SIZE,
    SHA256_CELLS,
    SYMLINK,
    Chunk,
    FileEntry,
    PackIndex,
    grid,
    validate_relative_path,
)

__all__ = [
    "INCOMPRESSIBLE_LEVEL",
    "CellRef",
    "ChunkCorrupt",
    "build_index",
    "compress",
    "data_cells",
    "decompress",
    "finalize_tree",
    "is_zero",
    "looks_incompressible",
    "open_for_read",
    "prepare_tree",
    "read_cell",
    "read_cell_into",
    "scan_tree",
    "unpack_from",
    "write_chunk",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted where a file should be must fail or return at once, never hang.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# ELOOP: a symlink where O_NOFOLLOW was asked (EMLINK on FreeBSD); ENOTDIR: a file where a folder was.
_NOT_A_PLAIN_PATH = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR}
_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: int | None = getattr(os, "SEEK_HOLE", None)
# setuid/setgid bits are recorded when packing but never applied when unpacking: a pulled VM bundle
# has no business planting privileged executables on the machine that pulls it. The sticky bit is
# kept on folders only (macOS refuses it on files with EFTYPE).
_FILE_MODE_BITS = 0o777
_DIR_MODE_BITS = 0o1777
_ZERO_BLOCK = bytes(256 * 1024)  # compared slice by slice: measured faster than one 32 MiB memcmp
_ZERO_PIECE = bytes(64 * 1024)
_SPARSE_BLOCK = 4096  # the block size of APFS and ext4: a zero block this big is left as a hole


class ChunkCorrupt(Unprocessable):
    """Chunk bytes do not decompress, or do not match the digest and size the index promises."""


@dataclass(frozen=True)
class CellRef:
    """One grid cell of a bundle file that may hold data (it is not known to lie in a hole)."""

    path: str
    offset: int
    size: int


# ---- scanning ---------------------------------------------------------------------------------
def scan_tree(root: Path) -> list[FileEntry]:
    """Every folder, regular file and symlink under ``root``, sorted by path components.

    Files come back with their size and no chunks. Anything ``unpack`` could not recreate safely is
    refused here, at the source, rather than discovered by whoever pulls the bundle.
    """
    try:
        st = os.stat(root)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{root} does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{root} is not a folder: pack a VM bundle folder, not a single file")
    real_root = os.path.realpath(root)
    entries: list[FileEntry] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(os.path.join(root, prefix) if prefix else root) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = validate_relative_path(f"{prefix}{child.name}")
            st = child.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                entries.append(FileEntry(rel, DIR, mode))
                pending.append(rel + "/")
            elif stat.S_ISREG(st.st_mode):
                entries.append(FileEntry(rel, FILE, mode, st.st_size))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(child.path)
                _check_symlink(rel, target)
                if not _inside(real_root, os.path.realpath(child.path)):
                    raise InvalidInput(f"symlink {rel!r} resolves outside the bundle (through another symlink)")
                entries.append(FileEntry(rel, SYMLINK, mode, target=target))
            else:
                raise InvalidInput(
                    f"{rel!r} is a {_kind(st.st_mode)}; a bundle may only hold folders, files and symlinks"
                )
        if len(entries) > MAX_FILES:
            raise InvalidInput(f"{root} holds more than {MAX_FILES} entries; a pack holds at most that many")
    entries.sort(key=lambda e: e.path.split("/"))
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"


def _check_symlink(path: str, target: str) -> None:
    """The lexical rule ``PackIndex.parse`` applies, so what we pack is what a server accepts."""
    if not target or target.startswith("/") or "\x00" in target:
        raise InvalidInput(f"symlink {path!r} has an absolute or empty target {target[:80]!r}; only relative ones")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise InvalidInput(f"symlink {path!r} points outside the bundle ({target[:80]!r})")


def _inside(real_root: str, real_path: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip("/") + "/")


# ---- reading ----------------------------------------------------------------------------------
def data_cells(path: Path, size: int, chunk_size: int) -> list[tuple[int, int]]:
    """Grid cells of the first ``size`` bytes of ``path`` that intersect data.

    Cells lying wholly in holes are skipped without being read. Where the filesystem cannot report
    holes, every cell is returned (zero cells are still dropped later, after reading).
    """
    if size <= 0:
        return []
    cells = list(grid(size, chunk_size))
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return cells
    keep: list[int] = []
    fd = os.open(path, _READ_FLAGS)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, _SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                    break
                return cells  # EINVAL / ENOTSUP: this filesystem does not know
            if start >= size:
                break
            try:
                end = min(os.lseek(fd, start, _SEEK_HOLE), size)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return cells
                end = size  # the file shrank under us; the size check in build_index reports it
            if end <= start:
                return cells  # a filesystem answering nonsense: read everything
            first, last = start // chunk_size, (end - 1) // chunk_size
            if keep and keep[-1] >= first:
                first = keep[-1] + 1
            keep.extend(range(first, last + 1))
            pos = end
    finally:
        os.close(fd)
    return [cells[i] for i in keep]


def read_cell(path: Path, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset``; a short file means it changed while we were reading."""
    fd = os.open(path, _READ_FLAGS)
    try:
        data = os.pread(fd, size, offset)
        if len(data) == size:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            part = os.pread(fd, size - got, offset + got)
            if not part:
                raise Conflict(f"{path} shrank while being read; stop the VM and try again")
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def open_for_read(path: Path) -> int:
    """A descriptor to read a bundle's file with :func:`read_cell_into` (never through a symlink)."""
    return os.open(path, _READ_FLAGS)


def read_cell_into(fd: int, path: Path, offset: int, view: memoryview) -> None:
    """Fill ``view`` with the bytes at ``offset`` of ``path``'s open ``fd``, into a caller's reusable
    buffer: a push reads its cells into a fixed pool of buffers instead of allocating (and
    page-faulting) new ones per cell."""
    got, size = 0, len(view)
    while got < size:
        part = view[got:]
        n = os.preadv(fd, [part], offset + got) if hasattr(os, "preadv") else _pread_into(fd, part, offset + got)
        if n == 0:
            raise Conflict(f"{path} shrank while being read; stop the VM and try again")
        got += n


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def is_zero(data: bytes | memoryview) -> bool:
    """True if every byte is zero: such a cell is stored as a hole, never as a chunk.

    A memoryview is compared in 64 KiB copies: ``bytes == bytes`` is a memcmp, while comparing a
    memoryview walks it byte by byte (measured 0.23 ms against 10.9 ms for a 4 MiB zero cell).
    """
    n = len(data)
    if n and (data[0] or data[-1]):
        return False
    piece = len(_ZERO_PIECE)
    for start in range(0, n, piece):
        part = data[start : start + piece]
        raw = part.tobytes() if isinstance(part, memoryview) else part
        if raw != (_ZERO_PIECE if len(raw) == piece else _ZERO_PIECE[: len(raw)]):
            return False
    return True


# ---- compression ------------------------------------------------------------------------------
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """zstd contexts are not thread-safe: one per thread and level, reused across chunks."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


_SAMPLES = 8
_SAMPLE_BYTES = 4096
_SAMPLED_FROM = 64 * 1024
INCOMPRESSIBLE_LEVEL = -5
"""zstd's ``--fast=5``: what a cell that looks incompressible is compressed with. On random bytes it
runs at 3.8 GB/s here against level 3's 1.15 (both store them as they are); a cell misjudged still
compresses, about half as well as at level 3."""


def looks_incompressible(data: bytes | memoryview) -> bool:
    """Whether every one of ``_SAMPLES`` 4 KiB samples spread over ``data`` fails to shrink by 3% at
    zstd level 1: already compressed or encrypted bytes (packages, media, FileVault). Borg's "auto"
    compression decides the same way. Costs 25-60 us on a 4 MiB cell, which takes 4-13 ms to compress."""
    view = memoryview(data)
    if len(view) < _SAMPLED_FROM:
        return False
    probe, step = _compressor(1), len(view) // _SAMPLES
    for start in range(0, step * _SAMPLES, step):
        sample = view[start : start + _SAMPLE_BYTES]
        if len(probe.compress(sample)) < 0.97 * len(sample):
            return False
    return True


def compress(data: bytes | memoryview, level: int = 3, out: bytearray | mmap.mmap | None = None) -> bytes | memoryview:
    """One zstd frame with its content size in the header (``decompress`` checks it before allocating).

    A cell that looks incompressible is compressed at ``INCOMPRESSIBLE_LEVEL``: as large a frame (its
    bytes are stored as they are either way) for a third of the CPU. With ``out`` (the caller's
    buffer of ``core.chunk_check.compressed_bound(len(data))`` bytes, kept from one cell to the next)
    that frame is written into it and a view of it returned: as fresh memory, its 4 MiB cost a page
    fault per 4 KiB, which took longer than compressing them (2.4 vs 4.5 ms a cell). Other cells keep
    the one-shot call, whose frames are 0.5% smaller than a stream's and mostly small."""
    if level > INCOMPRESSIBLE_LEVEL and looks_incompressible(data):
        if out is not None:
            return _compress_into(_compressor(INCOMPRESSIBLE_LEVEL), data, out)
        level = INCOMPRESSIBLE_LEVEL
    return _compressor(level).compress(data)


def _compress_into(cctx: zstandard.ZstdCompressor, data: bytes | memoryview, out: bytearray | mmap.mmap) -> memoryview:
    view = memoryview(out)
    reader = cctx.stream_reader(data, size=len(data), read_size=len(data))
    length = 0
    while length < len(view):
        got = reader.readinto(view[length:])
        if not got:
            return view[:length]
        length += got
    raise ValueError(f"a zstd frame of {len(data)} bytes did not fit in {len(out)}")


def decompress(blob: bytes, expected_digest: str, expected_size: int) -> bytes:
    """The raw bytes of a stored chunk, or ``ChunkCorrupt``; never bytes that fail their digest.

    The declared content size is checked before decompressing, so a hostile frame cannot make us
    allocate more than the index said the chunk holds.
    """
    if expected_size < 1:
        raise ValueError("chunks hold at least one byte")
    name = f"chunk {expected_digest[:12]}"
    try:
        declared = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(f"{name} is corrupt: not a zstd frame") from exc
    if declared not in (-1, expected_size):  # -1: the frame does not say
        raise ChunkCorrupt(f"{name} is corrupt: it declares {declared} bytes, the index says {expected_size}")
    try:
        raw = _decompressor().decompress(blob, max_output_size=expected_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(f"{name} is corrupt: {exc}") from exc
    if len(raw) != expected_size:
        raise ChunkCorrupt(f"{name} is corrupt: {len(raw)} bytes instead of {expected_size}")
    if SHA256_CELLS.digest(raw) != expected_digest:
        raise ChunkCorrupt(f"{name} is corrupt: its content does not match its digest")
    return raw


# ---- indexing ---------------------------------------------------------------------------------
def _hash_cell(root: Path, cell: CellRef) -> str | None:
    """Digest of a cell, or None for an all-zero one; the bytes die here, only the digest is kept."""
    data = read_cell(root / cell.path, cell.offset, cell.size)
    return None if is_zero(data) else SHA256_CELLS.digest(data)


def build_index(
    root: Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    workers: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> PackIndex:
    """Index the bundle at ``root``: every data cell hashed, holes and zero cells left out.

    At most ``2 * workers`` cells are queued or running at once, and only running ones hold their
    bytes, so memory stays near ``workers * chunk_size``. ``on_progress(nbytes)`` is called from the
    calling thread only, with logical bytes: the hole cells of a file when it is planned, each data
    cell when its digest is in. Over a whole run the calls add up to ``PackIndex.size``.
    """
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % MIN_CHUNK_SIZE:
        raise InvalidInput(
            f"chunk_size must be a multiple of {MIN_CHUNK_SIZE} between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )
    if workers < 1:
        raise ValueError("workers must be at least 1")
    report = on_progress or (lambda _n: None)
    entries = scan_tree(root)
    found: dict[str, list[Chunk]] = {e.path: [] for e in entries if e.type == FILE}
    window = 2 * workers
    pending: deque[tuple[CellRef, Future[str | None]]] = deque()

    def drain(limit: int) -> None:
        while len(pending) > limit:
            cell, future = pending.popleft()
            cell_digest = future.result()
            if cell_digest is not None:
                found[cell.path].append(Chunk(cell.offset, cell.size, cell_digest))
            report(cell.size)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pdcat-pack")
    try:
        for entry in entries:
            if entry.type != FILE:
                continue
            cells = data_cells(root / entry.path, entry.size, chunk_size)
            holes = entry.size - sum(length for _, length in cells)
            if holes:
                report(holes)
            for offset, length in cells:
                drain(window - 1)
                cell = CellRef(entry.path, offset, length)
                pending.append((cell, pool.submit(_hash_cell, root, cell)))
        drain(0)
        for entry in entries:
            if entry.type == FILE and os.lstat(root / entry.path).st_size != entry.size:
                raise Conflict(f"{entry.path} changed size while being packed; stop the VM and try again")
    except FileNotFoundError as exc:
        raise Conflict(f"a file vanished while {root} was being packed; stop the VM and try again") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    files = tuple(
        FileEntry(e.path, e.type, e.mode, e.size, tuple(found[e.path]), e.target) if e.type == FILE else e
        for e in entries
    )
    return PackIndex(chunk_size, files)


# ---- unpacking --------------------------------------------------------------------------------
def _check_layout(index: PackIndex) -> None:
    """Refuse, before touching the disk, an index whose entries nest inside files or symlinks."""
    paths = sorted(validate_relative_path(e.path) for e in index.files)
    for before, after in itertools.pairwise(paths):
        if before == after:
            raise InvalidInput(f"duplicate path in pack: {after[:80]!r}")
    for entry in index.files:
        if entry.type == DIR:
            continue
        # everything under entry.path sorts right after entry.path + "/": one bisect, not a walk per path
        inner = bisect.bisect_left(paths, entry.path + "/")
        if inner < len(paths) and paths[inner].startswith(entry.path + "/"):
            raise InvalidInput(f"{paths[inner][:80]!r} lies inside {entry.path[:80]!r}, which is a {entry.type}")


@contextmanager
def _opened_dest(dest: Path) -> Iterator[int]:
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InvalidInput(f"{dest} is not a folder prepared for unpacking") from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _parent(dest_fd: int, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
    """``(fd of the folder holding path, last component)``, walked without following any symlink.

    Being relative to ``dest_fd`` with no ``..`` (``validate_relative_path``) and no symlink on the
    way is what keeps every write inside the destination, whatever the tree holds meanwhile.
    """
    parts = validate_relative_path(path).split("/")
    fd = os.dup(dest_fd)
    try:
        for name in parts[:-1]:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _NOT_A_PLAIN_PATH:
                    raise InvalidInput(f"{path[:80]!r}: {name!r} on its way is not a plain folder") from exc
                raise
            os.close(fd)
            fd = next_fd
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _open_leaf(parent_fd: int, name: str, flags: int, path: str) -> int:
    """Open a regular file by name in ``parent_fd``; anything else there (symlink, fifo...) is refused."""
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in _NOT_A_PLAIN_PATH or exc.errno in (errno.EISDIR, errno.ENXIO):
            raise InvalidInput(f"{path[:80]!r} in the destination is not a regular file") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{path[:80]!r} in the destination is not a regular file")
    return fd


def open_for_write(root_fd: int, path: str) -> int:
    """A write descriptor of the regular file at ``path`` under the folder ``root_fd``: walked without
    following a symlink, and refused if anything but a regular file is there."""
    with _parent(root_fd, path) as (parent_fd, name):
        return _open_leaf(parent_fd, name, _WRITE_FLAGS, path)


def _readlink(parent_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a symlink
            return None
        raise


def prepare_tree(dest: Path, index: PackIndex) -> None:
    """Create every folder and every regular file at its full size, as holes (nothing is written).

    Files start as 0600 and folders writable; ``finalize_tree`` applies the real modes at the end.
    """
    _check_layout(index)
    try:
        dest.mkdir(parents=True)
    except FileExistsError as exc:
        if not dest.is_dir():
            raise InvalidInput(f"{dest} exists and is not a folder") from exc
        with os.scandir(dest) as it:
            if next(it, None) is not None:
                raise InvalidInput(f"{dest} is not empty; unpack into a new or empty folder") from exc
    with _opened_dest(dest) as dest_fd:
        for entry in index.files:
            with _parent(dest_fd, entry.path, create=True) as (parent_fd, name):
                if entry.type == DIR:
                    try:
                        os.mkdir(name, 0o777, dir_fd=parent_fd)
                    except FileExistsError as exc:  # already made as the parent of an earlier entry
                        if not stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                            raise InvalidInput(f"{entry.path[:80]!r} is both a folder and a file") from exc
                elif entry.type == FILE:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
                    try:
                        fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
                    except (FileExistsError, IsADirectoryError) as exc:
                        raise InvalidInput(f"{entry.path[:80]!r} clashes with another entry") from exc
                    try:
                        os.ftruncate(fd, entry.size)
                    finally:
                        os.close(fd)


def write_chunk(dest: Path, entry: FileEntry, chunk: Chunk, data: bytes) -> None:
    """Write verified raw bytes at the chunk's offset in the file ``prepare_tree`` created.

    Zero blocks inside the chunk are not written: the region is a fresh hole (or already holds this
    very chunk, when a pull resumes), so they read back as zeros and stay sparse on disk. Safe to call
    from several threads at once, also for the same file: each call has its own fd.
    """
    if entry.type != FILE or len(data) != chunk.size or chunk.offset + chunk.size > entry.size:
        raise ChunkCorrupt(f"chunk {chunk.digest[:12]} does not fit {entry.path[:80]!r} at {chunk.offset}")
    with _opened_dest(dest) as dest_fd:
        fd = open_for_write(dest_fd, entry.path)
        try:
            view = memoryview(data)
            for start, end in data_runs(data):
                done = start
                while done < end:
                    done += os.pwrite(fd, view[done:end], chunk.offset + done)
        finally:
            os.close(fd)


def data_runs(data: bytes, block: int = _SPARSE_BLOCK) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the runs of ``block``-sized cells in ``data`` that are not all zero: what to
    write, so the rest stays a hole (``block`` at most 256 KiB)."""
    zero = _ZERO_BLOCK[:block]
    start = -1
    for pos in range(0, len(data), block):
        part = data[pos : pos + block]
        if part == zero or (len(part) < block and part == zero[: len(part)]):
            if start >= 0:
                yield start, pos
                start = -1
        elif start < 0:
            start = pos
    if start >= 0:
        yield start, len(data)


def finalize_tree(dest: Path, index: PackIndex, *, fsync: bool = False) -> None:
    """Create the symlinks, then apply modes: files, then folders deepest first.

    A symlink that resolves outside ``dest`` (lexically fine, but through another symlink) is removed
    again and refused. With ``fsync`` every file and folder is flushed to disk before returning.
    """
    _check_layout(index)
    links = [e for e in index.files if e.type == SYMLINK]
    with _opened_dest(dest) as dest_fd:
        for entry in links:
            target = entry.target or ""
            _check_symlink(entry.path, target)
            with _parent(dest_fd, entry.path, create=True) as (parent_fd, name):
                try:
                    os.symlink(target, name, dir_fd=parent_fd)
                except FileExistsError as exc:  # a resumed finalize finds its own links: fine
                    if _readlink(parent_fd, name) != target:
                        raise InvalidInput(f"symlink {entry.path[:80]!r} clashes with another entry") from exc
        real_dest = os.path.realpath(dest)
        escaping = [e for e in links if not _inside(real_dest, os.path.realpath(dest / e.path))]
        for entry in escaping:
            with _parent(dest_fd, entry.path) as (parent_fd, name):
                os.unlink(name, dir_fd=parent_fd)
        if escaping:
            raise InvalidInput(f"symlink {escaping[0].path[:80]!r} resolves outside the bundle; refused")

        for entry in index.files:
            if entry.type != FILE:
                continue
            with _parent(dest_fd, entry.path) as (parent_fd, name):
                fd = _open_leaf(parent_fd, name, _READ_FLAGS, entry.path)
                try:
                    if fsync:
                        os.fsync(fd)
                    os.fchmod(fd, entry.mode & _FILE_MODE_BITS)
                finally:
                    os.close(fd)

        folders = {"/".join(e.path.split("/")[:i]) for e in index.files for i in range(1, e.path.count("/") + 1)}
        modes = {e.path: e.mode for e in index.files if e.type == DIR}
        folders.update(modes)
        for path in sorted(folders, key=lambda p: p.count("/"), reverse=True):
            if path not in modes and not fsync:
                continue
            with _parent(dest_fd, path) as (parent_fd, name):
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                except OSError as exc:
                    if exc.errno in _NOT_A_PLAIN_PATH:
                        raise InvalidInput(f"{path[:80]!r} in the destination is not a plain folder") from exc
                    raise
                try:
                    if fsync:
                        os.fsync(fd)
                    if path in modes:
                        os.fchmod(fd, modes[path] & _DIR_MODE_BITS)
                finally:
                    os.close(fd)
        if fsync:
            os.fsync(dest_fd)


def unpack_from(index: PackIndex, dest: Path, fetch: Callable[[Chunk], bytes]) -> None:
    """Serial unpack: ``fetch`` returns verified raw bytes; a digest used in several places is
    fetched once per place. Transfers that want parallelism call the three steps themselves."""
    prepare_tree(dest, index)
    for entry in index.files:
        for chunk in entry.chunks:
            write_chunk(dest, entry, chunk, fetch(chunk))
    finalize_tree(dest, index)

"""The chunked download: get every chunk of a pack, verify it, and place its raw bytes at their
offsets in sparse files in a hidden ``.partial`` folder, renamed into place when all are in.

Each chunk, on a pool of ``TransferConfig.workers`` threads, with buffers that are reused, never
allocated per chunk (each worker owns one for a compressed object; a few raw buffers are shared, held
only while a chunk is decompressed, hashed and placed):

1. **get** it from this machine if it can (``LocalChunks``: a chunk object the cache keeps, else the
   raw bytes of a cached bundle), else from storage, with the GET written straight into the buffer;
2. **verify** it: a zstd frame that declares the size the index gives, decompressed into a raw
   buffer, then the sha256 of the raw bytes. A local copy that fails is dropped and the chunk
   downloaded instead; a download that fails is fetched once more, then reported to the catalog
   (``…/pull/report``) and the pull stops;
3. **place** it (``place``, the one function that writes chunk bytes into a bundle): ``pwrite`` of the
   runs that are not all-zero 4 KiB blocks, at each place the index gives the chunk, through file
   descriptors opened once per file;
4. **keep** a downloaded object in the cache when it is asked to, then journal the chunk.

Decompression (zstandard) and sha256 (hashlib, on large buffers) release the GIL, and receiving and
writing are system calls, so the workers keep every core busy while others wait on the network.
Memory is those buffers, the index and the sets of digests, whatever the VM size.

A journal of finished chunks lives next to the partial folder, so a killed pull resumes. What resuming
cannot fix (bad data in storage, a bad index, a version deleted or revoked under the pull) removes
everything it wrote; network errors and 5xx keep it for the next run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zstandard

from client.api import CatalogClient
from client.blobio import BlobClient, BlobTooLarge, UrlBook
from client.direct_io import ALIGN, pwrite_direct, reopen_direct
from client.packer import ChunkCorrupt, finalize_tree, open_for_write, prepare_tree
from client.pool import run_bounded
from client.transfer.common import DiskFull, Progress, TransferConfig, partial_paths, pull_lock
from client.transfer.plan import places
from core.errors import Conflict, Gone, InvalidInput, NotFound, PdcatError
from core.pack import FILE, SHA256_CELLS, Chunk, FileEntry, Naming, PackIndex
from core.wire import CHUNK_PAGE

__all__ = ["DownloadStats", "LocalChunks", "download", "place", "read_journal"]

log = logging.getLogger("pdcat.transfer")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BLOCK = 4096  # the block size of APFS and ext4: a zero block this big, aligned in its file, stays a hole
_ZERO_BLOCK = bytes(_BLOCK)
_DIRECT_MIN = 64 * 1024  # smaller runs (a chunk's data between zero blocks) are written through the page cache
_MAX_OPEN_FILES = 256  # descriptors kept open at once; a bundle with more files opens the rest per chunk
_MAX_RAW_BUFFERS = 4  # chunks decompressed, hashed and placed at once (more cores rarely help a pull)


class LocalChunks(Protocol):
    """Chunks this machine holds (``client.cache.LocalChunks``). Nothing it returns is trusted."""

    def has(self, chunk_digest: str) -> bool: ...

    def read_object(self, chunk_digest: str, into: memoryview) -> int | None: ...

    def read_range(self, chunk_digest: str, into: memoryview) -> bool: ...

    def drop(self, chunk_digest: str) -> None: ...

    def keep(self, chunk_digest: str, blob: memoryview) -> None: ...


@dataclass
class DownloadStats:
    downloaded_chunks: int = 0
    downloaded_bytes: int = 0
    reused_chunks: int = 0
    reused_bytes: int = 0
    resumed_chunks: int = 0


def read_journal(journal: Path, pack_digest: str) -> set[str]:
    """The chunks a killed pull of this pack already wrote (none if the journal is another pack's)."""
    try:
        lines = journal.read_text().split()
    except FileNotFoundError:
        return set()
    if not lines or lines[0] != pack_digest:
        return set()
    return set(lines[1:])


def download(
    api: CatalogClient,
    manifest: dict[str, Any],
    index: PackIndex,
    first_urls: dict[str, str],
    final: Path,
    *,
    config: TransferConfig,
    progress: Progress,
    blobs: BlobClient,
    local: LocalChunks | None = None,
    pack_digest: str | None = None,
) -> DownloadStats:
    """Fill ``final`` with the pack: verified chunks placed at their offsets in sparse files.

    Work happens in a hidden partial folder with a journal of finished chunks, so a killed pull
    resumes; the folder is renamed to ``final`` only when every chunk is in and verified. ``local``:
    where this machine may already hold chunks (tried first), and where downloaded ones are kept.
    ``pack_digest``: the index's digest when the caller has checked it (else it is computed).
    """
    digest = pack_digest or index.digest
    partial, journal = partial_paths(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with pull_lock(final):
        if final.exists():
            raise Conflict(f"{final} already exists; pick another --name or remove it first")
        done = read_journal(journal, digest) if partial.is_dir() else set()
        where = places(index)
        todo = [d for d in where if d not in done]
        stats = DownloadStats(resumed_chunks=len(done))
        key = (manifest["catalog_id"], manifest["version"], manifest["architecture"])
        remote = [d for d in todo if local is None or not local.has(d)]
        urls = UrlBook(
            {d: u for d, u in first_urls.items() if d in where and d not in done},
            remote,
            lambda ds: api.pull_urls(*key, ds),
            CHUNK_PAGE,
        )
        sizes = index.unique_digests()  # object digest -> raw size
        largest = max(sizes.values(), default=0)
        naming = index.naming
        buffers = _Buffers(largest)
        raws = _RawPool(largest, max(1, min(config.workers, os.cpu_count() or 2, _MAX_RAW_BUFFERS)))
        lock = threading.Lock()
        journal_file: Any = None
        files: _Files | None = None

        def fetch(chunk_digest: str) -> None:
            if config.chunk_delay:
                time.sleep(config.chunk_delay)
            size = sizes[chunk_digest]
            work = buffers.mine()

            def place_all(raw: bytearray) -> None:
                assert files is not None
                for entry, chunk in where[chunk_digest]:
                    place(files, raw, entry, chunk)

            fetched = 0
            here = False
            if local is not None and local.has(chunk_digest):
                with raws.take() as raw:
                    here = _from_local(local, work, raw, chunk_digest, size, naming)
                    if here:
                        place_all(raw)
            if not here:
                try:
                    fetched = _download_verified(blobs, urls, work, raws, chunk_digest, size, naming, place_all)
                except ChunkCorrupt as exc:
                    raise _reported(api, key, chunk_digest, exc) from exc
            if fetched and local is not None:
                local.keep(chunk_digest, memoryview(work.blob)[:fetched])
            with lock:
                journal_file.write(chunk_digest + "\n")
                journal_file.flush()
                if fetched:
                    stats.downloaded_chunks += 1
                    stats.downloaded_bytes += fetched
                else:
                    stats.reused_chunks += 1
                    stats.reused_bytes += size
            progress.advance(size)

        progress.start("downloading", sum(sizes[d] for d in todo))
        try:
            if not done:
                shutil.rmtree(partial, ignore_errors=True)
                prepare_tree(partial, index)
                journal.write_text(digest + "\n")
            journal_file = journal.open("a")
            files = _Files(partial)
            try:
                run_bounded(todo, fetch, config.workers)
            finally:
                files.close()
            finalize_tree(partial, index)
        except OSError as exc:
            _discard(partial, journal)
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"{final.parent} ran out of space; the partial VM was removed") from exc
            raise
        except (ChunkCorrupt, InvalidInput):
            _discard(partial, journal)  # resuming cannot fix bad data in storage or a bad index
            raise
        except (NotFound, Gone) as exc:
            # The version went away mid-pull (rm, rm --purge, revoke): storage has no chunk at a
            # signed URL (404), or the catalog no longer hands out URLs for it (404/410). A resume
            # could never finish, so nothing is kept. Network errors and 5xx stay resumable.
            _discard(partial, journal)
            raise _vanished(key, exc) from exc
        finally:
            if journal_file is not None:
                with contextlib.suppress(OSError):  # a full disk must not replace the real error
                    journal_file.close()
            progress.finish()
        os.rename(partial, final)
        journal.unlink(missing_ok=True)
        return stats


# ---- placing ----------------------------------------------------------------------------------
def place(files: _Files, raw: bytearray, entry: FileEntry, chunk: Chunk) -> None:
    """Write a chunk's verified raw bytes into the bundle: the one step that does.

    ``raw`` holds the raw bytes of the chunk's object; ``chunk.size`` of them, from
    ``chunk.object_offset`` (0 in format 1; an extent's offset in its object in format 2), go to
    ``entry``'s file at ``chunk.offset``.

    Each 4 KiB block of the file that the chunk would fill with zeros is skipped: the file is fresh
    and sparse there (or already holds this very chunk, when a pull resumes), so it reads back as
    zeros and stays a hole. Safe from several threads at once, also for the same file.
    """
    start, end = chunk.object_offset, chunk.object_offset + chunk.size
    if entry.type != FILE or chunk.offset < 0 or chunk.offset + chunk.size > entry.size or end > len(raw):
        raise ChunkCorrupt(f"chunk {chunk.digest[:12]} does not fit {entry.path[:80]!r} at {chunk.offset}")
    view = memoryview(raw)
    with files.opened(entry.path) as fd:
        for run_start, run_end in _data_runs(raw, start, end, chunk.offset):
            offset = chunk.offset + (run_start - start)
            direct_end = run_start + _direct_part(offset, run_end - run_start)
            if direct_end > run_start and files.write_direct(entry.path, fd, view[run_start:direct_end], offset):
                run_start = direct_end  # the rest (a file's short last block) as usual
            pos = run_start
            while pos < run_end:
                pos += os.pwrite(fd, view[pos:run_end], chunk.offset + (pos - start))


def _direct_part(offset: int, size: int) -> int:
    """How much of a run at ``offset`` is written past the page cache (``client.direct_io``): its whole
    blocks, if it starts on one and is large enough that the disk's latency (a direct write waits for
    it) is worth the page-cache work it saves; else nothing."""
    return size - size % ALIGN if size >= _DIRECT_MIN and offset % ALIGN == 0 else 0


def _data_runs(buf: bytearray, start: int, end: int, file_offset: int) -> Iterator[tuple[int, int]]:
    """``(from, to)`` in ``buf`` of the runs of ``buf[start:end]`` to write: everything but the 4 KiB
    blocks (aligned in the file, where ``buf[start]`` lands at ``file_offset``) that are all zeros.

    ``bytearray.find`` scans for 4 KiB of zeros in C at many GB/s, so data without zero blocks costs
    one scan; only candidate blocks are looked at from Python.
    """
    run_start = pos = start
    while pos < end:
        found = buf.find(_ZERO_BLOCK, pos, end)
        if found < 0:
            break
        block = found + (-(file_offset + found - start)) % _BLOCK  # first aligned block in the zero run
        if block + _BLOCK > end:
            break
        if buf.find(_ZERO_BLOCK, block, block + _BLOCK) != block:
            pos = block + 1  # that zero run covers no aligned block; a later one may
            continue
        after = block + _BLOCK
        while after + _BLOCK <= end and buf.find(_ZERO_BLOCK, after, after + _BLOCK) == after:
            after += _BLOCK
        if block > run_start:
            yield run_start, block
        run_start = pos = after
    tail = (file_offset + end - start) % _BLOCK  # a last block cut short by the end of the file
    if tail and end - tail >= run_start and buf.find(_ZERO_BLOCK[:tail], end - tail, end) == end - tail:
        end -= tail
    if run_start < end:
        yield run_start, end


class _Files:
    """Write descriptors of the regular files in a folder ``prepare_tree`` made, opened once each.

    Every path is opened one component at a time relative to the folder, with ``O_NOFOLLOW``, and
    must end at a regular file: nothing planted in the tree can make a write land outside it.
    """

    def __init__(self, root: Path) -> None:
        self._root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        self._fds: dict[str, int] = {}
        self._direct: dict[str, int | None] = {}  # a kept file's direct descriptor (None: it has none)
        self._direct_refused = False  # the filesystem refused a direct write: ordinary writes from then on
        self._lock = threading.Lock()

    def write_direct(self, path: str, fd: int, data: memoryview, offset: int) -> bool:
        """Write ``data`` at ``offset`` of ``path`` (open as ``fd``) bypassing the page cache; False when
        that cannot be done here (the caller writes it the ordinary way)."""
        with self._lock:
            if self._direct_refused or self._fds.get(path) != fd:  # only files kept open get a second descriptor
                return False
            if path not in self._direct:
                self._direct[path] = reopen_direct(fd)
            direct = self._direct[path]
        if direct is None:
            return False
        if pwrite_direct(direct, data, offset):
            return True
        self._direct_refused = True
        return False

    @contextlib.contextmanager
    def opened(self, path: str) -> Iterator[int]:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None and len(self._fds) < _MAX_OPEN_FILES:
                fd = self._fds[path] = open_for_write(self._root, path)
        if fd is not None:
            yield fd
            return
        fd = open_for_write(self._root, path)
        try:
            yield fd
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in (*self._fds.values(), *self._direct.values()):
                if fd is not None:
                    os.close(fd)
            self._fds.clear()
            self._direct.clear()
            os.close(self._root)


# ---- getting and verifying ----------------------------------------------------------------------
class _Work:
    """One worker's buffer for a compressed object and its zstd context, reused for every chunk."""

    def __init__(self, largest: int) -> None:
        self.blob = bytearray(_compressed_bound(largest))
        self.spare = bytearray(1)
        self.dctx = zstandard.ZstdDecompressor()


class _Buffers(threading.local):
    def __init__(self, largest: int) -> None:
        self.largest = largest
        self.work: _Work | None = None

    def mine(self) -> _Work:
        if self.work is None:
            self.work = _Work(self.largest)
        return self.work


class _RawPool:
    """Raw buffers, made on demand up to ``size`` and handed back after each chunk: a worker holds one
    only while it decompresses, hashes and places a chunk, not while it waits on the network."""

    def __init__(self, largest: int, size: int) -> None:
        self._largest = largest
        self._left = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[bytearray]:
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._left > 0
                self._left -= make
            buf = bytearray(self._largest) if make else self._free.get()
        try:
            yield buf
        finally:
            self._free.put(buf)


def _compressed_bound(size: int) -> int:
    """The most a zstd frame of ``size`` raw bytes can take (zstd's bound, with room to spare)."""
    return size + (size >> 7) + 64 * 1024


def _unpack(
    work: _Work, raw: bytearray, blob_size: int, chunk_digest: str, size: int, naming: Naming = SHA256_CELLS
) -> None:
    """Decompress ``work.blob[:blob_size]`` into ``raw[:size]`` and check it: a zstd frame
    declaring ``size`` bytes (checked before decompressing), exactly ``size`` bytes out and nothing
    after them, and the name the object has in its index's format (``naming``: its sha256, or the
    root of its blocks). ``ChunkCorrupt`` otherwise."""
    name = f"chunk {chunk_digest[:12]}"
    blob = memoryview(work.blob)[:blob_size]
    try:
        declared = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(f"{name} is corrupt: not a zstd frame") from exc
    if declared not in (-1, size):  # -1: the frame does not say
        raise ChunkCorrupt(f"{name} is corrupt: it declares {declared} bytes, the index says {size}")
    out = memoryview(raw)[:size]
    got = extra = 0
    try:
        reader = work.dctx.stream_reader(blob, read_across_frames=True)
        while got < size:
            n = reader.readinto(out[got:])
            if n <= 0:
                break
            got += n
        if got == size:
            extra = reader.readinto(work.spare)
    except zstandard.ZstdError as exc:
        raise ChunkCorrupt(f"{name} is corrupt: {exc}") from exc
    if got != size or extra:
        raise ChunkCorrupt(f"{name} is corrupt: it does not decompress to the {size} bytes the index says")
    if naming.digest(out) != chunk_digest:
        raise ChunkCorrupt(f"{name} is corrupt: its content does not match its digest")


def _from_local(local: LocalChunks, work: _Work, raw: bytearray, chunk_digest: str, size: int, naming: Naming) -> bool:
    """Fill ``raw`` with the chunk from this machine, verified; False if it is not here intact."""
    length = local.read_object(chunk_digest, memoryview(work.blob))
    if length is not None:
        try:
            _unpack(work, raw, length, chunk_digest, size, naming)
            return True
        except ChunkCorrupt as exc:
            log.warning("the cached copy of %s (%s); downloading it again", f"chunk {chunk_digest[:12]}", exc.message)
            local.drop(chunk_digest)
    view = memoryview(raw)[:size]
    return local.read_range(chunk_digest, view) and naming.digest(view) == chunk_digest


def _download_verified(
    blobs: BlobClient,
    urls: UrlBook,
    work: _Work,
    raws: _RawPool,
    chunk_digest: str,
    size: int,
    naming: Naming,
    use: Callable[[bytearray], None],
) -> int:
    """GET, decompress and verify one chunk, then ``use`` its raw bytes; a corrupt one is fetched once
    more before giving up. Returns the bytes downloaded (the object stays in ``work.blob``)."""
    what = f"chunk {chunk_digest[:12]}"
    for attempt in range(2):
        url = urls.get(chunk_digest) if attempt == 0 else urls.refresh(chunk_digest)
        try:
            length = blobs.get_into(url, what, memoryview(work.blob), refresh=lambda: urls.refresh(chunk_digest))
        except BlobTooLarge as exc:
            problem = ChunkCorrupt(f"{what} is corrupt: {exc.message}")
        else:
            with raws.take() as raw:
                try:
                    _unpack(work, raw, length, chunk_digest, size, naming)
                except ChunkCorrupt as exc:
                    problem = exc
                else:
                    urls.done(chunk_digest)
                    use(raw)
                    return length
        if attempt == 1:
            raise problem
        log.warning("chunk %s failed verification; fetching it again", chunk_digest[:12])
    raise AssertionError("unreachable")


# ---- failures ---------------------------------------------------------------------------------
def _vanished(key: tuple[str, str, str], exc: NotFound | Gone) -> PdcatError:
    """The one line a pull says when its version was deleted, purged or revoked under it."""
    what = f"{key[0]}:{key[1]} ({key[2]})"
    if isinstance(exc, Gone):
        return Gone(f"{what} was revoked while pulling; the partial download was removed")
    return NotFound(f"{what} was deleted or purged while pulling ({exc.message}); the partial download was removed")


def _reported(api: CatalogClient, key: tuple[str, str, str], digest: str, exc: ChunkCorrupt) -> ChunkCorrupt:
    """Tell the catalog a chunk arrived corrupt twice; it re-verifies and quarantines it if so."""
    try:
        verdict = api.report_corrupt(*key, [digest])
    except PdcatError:
        return exc
    if digest in verdict["quarantined"]:
        return ChunkCorrupt(
            f"{exc.message}; the catalog confirmed it and quarantined the chunk: pushing this version again repairs it"
        )
    return ChunkCorrupt(f"{exc.message}; the catalog's copy verifies, so the damage happened on the way: pull again")


def _discard(partial: Path, journal: Path) -> None:
    """Leave nothing half-written behind after a failure that resuming cannot fix."""
    shutil.rmtree(partial, ignore_errors=True)
    journal.unlink(missing_ok=True)

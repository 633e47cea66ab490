"""Push in one pass (ADR 002): every data cell is read once, hashed, and, if the catalog lacks it,
compressed and uploaded from the same bytes while the rest of the bundle is still being read.

    begin (chunk_size) → for each batch of cells: ask which are verified already → compress and
    PUT the rest to staging, several in flight → have them verified in pages as they land
    → declare the index (digest, size) and PUT it → commit

Memory is bounded by a budget of cells held at once (``_CELL_BUDGET_BYTES``), whatever the VM
size. A killed push, run again, re-asks which chunks are missing: verified ones are in storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from client.api import CatalogClient
from client.blobio import BlobClient
from client.packer import (
    ChunkCorrupt,
    compress,
    data_cells,
    is_zero,
    open_for_read,
    read_cell,
    read_cell_into,
    scan_tree,
)
from client.transfer.common import NoProgress, Progress, TransferConfig
from client.transfer.extents import BaseMap, ExtentsBuilder, NewObject, Segment, choose_block_size
from core.chunk_check import compressed_bound
from core.errors import Conflict, InvalidInput
from core.identity import ManifestKey
from core.pack import (
    BLOCK_SIZES,
    EXTENT_FORMATS,
    FILE,
    FORMAT_BLAKE3,
    FORMAT_EXTENTS,
    SHA256_CELLS,
    Chunk,
    FileEntry,
    Naming,
    PackIndex,
)
from core.wire import CHUNK_PAGE, MAX_INDEX_BYTES, VERIFY_PAGE

__all__ = ["PushResult", "push"]

log = logging.getLogger("pdcat.transfer")
T = TypeVar("T")

_CELL_BUDGET_BYTES = 32 * 1024 * 1024
"""Raw cell buffers (being read and hashed, waiting for the catalog's answer, being compressed):
with one compressed chunk per transfer in flight, the push's memory, whatever the VM size."""
_PACKS_IN_FLIGHT = 2
"""Packed objects (format 2) being filled, asked about or sent at once, each ``chunk_size`` bytes."""
_INLINE_CELL = 256 * 1024
"""Cells of at most this many bytes are read and hashed by the coordinator itself (``_read_soon``)."""


@dataclass
class PushResult:
    manifest: dict[str, Any]
    chunks: int
    uploaded_chunks: int
    uploaded_bytes: int
    reused_bytes: int
    seconds: float


def _fingerprint(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _retrying(config: TransferConfig, call: Callable[[], T]) -> T:
    """A catalog call that may answer 503 (garbage collection is sweeping, a cold start): retried as
    the policy says; the catalog's own last error is raised."""
    return config.policy.run(call, "a catalog request", give_up=lambda last: last)


@dataclass(frozen=True)
class _Cell:
    path: str  # bundle-relative
    offset: int
    size: int
    fd: int  # the file, open for reading (the coordinator's, closed after the file's last cell)
    last: bool = False  # the file's last data cell: once it is collected, the file is checked and closed


@dataclass
class _Item:
    """An object the catalog may lack: its name, its raw bytes, where to read them again, and how to
    give its buffer back once they are no longer needed."""

    digest: str
    data: memoryview
    segments: tuple[Segment, ...]
    release: Callable[[], None]
    progress: int  # bundle bytes to count as done once it is stored or sent


class _Stopped(Exception):
    """The pass is over (finished or failed): work still queued does nothing."""


class _StoredMeanwhile(Exception):
    """The catalog holds the chunk now (another pusher sent the same bytes): nothing to upload."""


class _Pass:
    """The one pass over the bundle: a coordinator (the calling thread) and a pool of workers.

    Workers read and hash cells (in order, a window ahead), then compress and PUT the objects the
    catalog lacks. The coordinator collects hashes in order, decides what each cell becomes (format
    1: one chunk; format 2: ``ExtentsBuilder``), asks the catalog about new objects a batch at a
    time, and hands the missing ones back to the pool. A fixed pool of cell buffers bounds memory: a
    buffer is taken before a cell is read into it and given back once its bytes are no longer needed
    (all zeros, reused, packed, stored already, or sent). Packed objects (format 2) have buffers of
    their own, at most ``_PACKS_IN_FLIGHT`` at once.
    """

    def __init__(
        self,
        api: CatalogClient,
        upload_id: str,
        root: Path,
        fingerprints: dict[str, tuple[int, int]],
        blobs: BlobClient,
        config: TransferConfig,
        progress: Progress,
        put_headers: dict[str, str],
        builder: ExtentsBuilder | None = None,
    ) -> None:
        self.api, self.upload_id, self.root, self.fingerprints = api, upload_id, root, fingerprints
        self.blobs, self.config, self.progress, self.put_headers = blobs, config, progress, put_headers
        self.builder = builder
        self.naming = builder.naming if builder is not None else SHA256_CELLS
        cells = max(4, _CELL_BUDGET_BYTES // config.chunk_size)
        hashers = max(2, os.cpu_count() or 2)
        self.window = max(2, min(hashers * 2, cells // 2))  # cells being read and hashed
        self.batch_cells = max(1, min(CHUNK_PAGE, cells - self.window))  # objects per catalog question
        self._buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(cells):
            self._buffers.put(bytearray(config.chunk_size))
        self._packs = threading.BoundedSemaphore(_PACKS_IN_FLIGHT)
        # Reading and hashing is CPU work: a pool the size of the machine. Sending mostly waits on
        # the network: ``workers`` transfers in flight, each holding one compressed chunk. Two pools,
        # so a read never queues behind an upload.
        self._hashing = ThreadPoolExecutor(hashers, thread_name_prefix="pdcat-hash")
        self._sending = ThreadPoolExecutor(config.workers, thread_name_prefix="pdcat-send")
        # frames of incompressible cells, one buffer per transfer in flight at most (``packer.compress``);
        # memory is touched only when such a cell comes
        self._outs: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._asking = ThreadPoolExecutor(1, thread_name_prefix="pdcat-ask")
        self._asked: deque[Future[None]] = deque()
        self._verifying = ThreadPoolExecutor(2, thread_name_prefix="pdcat-verify")
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._uploads: set[Future[None]] = set()
        self._verdicts: list[Future[None]] = []
        self._to_verify: list[str] = []
        self._verifies_running = 0
        self._sources: dict[str, tuple[Segment, ...]] = {}  # uploaded, not yet verified: to send again if refused
        self._batch: list[_Item] = []
        self._open: set[int] = set()  # descriptors of files whose cells are being read
        self.found: dict[str, list[Chunk]] = {}
        self.known: set[str] = set()  # digests this push has dealt with (stored, or sent)
        self.uploaded_bytes = self.uploaded_chunks = self.reused_bytes = 0

    # ---- the coordinator ---------------------------------------------------------------------
    def run(self, entries: list[FileEntry]) -> None:
        hashing: deque[tuple[_Cell, bytearray, Future[str | bytes | None]]] = deque()
        try:
            for entry in entries:
                if entry.type != FILE:
                    continue
                self.found[entry.path] = []
                if self.builder is not None:
                    self.builder.file(entry)
                cells = data_cells(self.root / entry.path, entry.size, self.config.chunk_size)
                holes = entry.size - sum(length for _, length in cells)
                if holes:
                    self.progress.skip(holes)
                if not cells:
                    continue
                fd = open_for_read(self.root / entry.path)
                self._open.add(fd)
                for n, (offset, length) in enumerate(cells, 1):
                    while len(hashing) >= self.window:
                        self._collect(hashing.popleft())
                    buffer = self._take_buffer(hashing)
                    cell = _Cell(entry.path, offset, length, fd, last=n == len(cells))
                    hashing.append((cell, buffer, self._read_soon(cell, buffer)))
            while hashing:
                self._collect(hashing.popleft())
            if self.builder is not None:
                self.builder.finish()
                self.builder.repack(self._read_again)
            self._ask()
            while self._asked:
                self._asked.popleft().result()
            self._wait_uploads()
            with self._lock:
                self._submit_verify()
            for verdict in self._verdicts:
                verdict.result()
            self._raise_if_failed()
        finally:
            self._fail(_Stopped())  # whatever is still queued returns at once
            self._hashing.shutdown(wait=True, cancel_futures=True)
            self._asking.shutdown(wait=True, cancel_futures=True)
            self._sending.shutdown(wait=True, cancel_futures=True)
            self._verifying.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(queue.Empty):
                while True:  # the cell buffers go now, before the index is built and serialised
                    self._buffers.get_nowait()
            for fd in self._open:
                os.close(fd)
            self._open.clear()

    def _read_soon(self, cell: _Cell, buffer: bytearray) -> Future[str | bytes | None]:
        """Read and hash a cell on the pool, or, when cells are small, here and now: handing a
        cell of a few KiB to another thread costs more than hashing it (a push of 100,000 4 KiB cells
        took 15 s on the pool, mostly thread hand-offs)."""
        if self.config.chunk_size > _INLINE_CELL:
            return self._hashing.submit(self._read, cell, buffer)
        done: Future[str | bytes | None] = Future()
        done.set_result(self._read(cell, buffer))
        return done

    def _take_buffer(self, hashing: deque[Any]) -> bytearray:
        """Wait for a free buffer; the coordinator's own held cells are moved on meanwhile, so it
        never waits for buffers only it could free."""
        while True:
            try:
                return self._buffers.get(timeout=0.05)
            except queue.Empty:
                self._raise_if_failed()
                if hashing:
                    self._collect(hashing.popleft())
                elif self._batch:
                    self._ask()

    def pack_buffer(self) -> bytearray:
        """A buffer for a packed object (format 2): the batch is asked first, so every packed object
        already made can be sent and free its place."""
        self._ask()
        while not self._packs.acquire(timeout=0.05):
            self._raise_if_failed()
        return bytearray(self.config.chunk_size)

    def _collect(self, item: tuple[_Cell, bytearray, Future[str | bytes | None]]) -> None:
        cell, buffer, future = item
        hashed = future.result()
        if cell.last:  # every cell of the file is read: it must not have changed meanwhile
            self._open.discard(cell.fd)
            os.close(cell.fd)
            if _fingerprint(self.root / cell.path) != self.fingerprints[cell.path]:
                self._buffers.put(buffer)
                raise Conflict(f"{cell.path} changed while pushing; stop the VM and push again")

        def release() -> None:
            self._buffers.put(buffer)

        view = memoryview(buffer)[: cell.size]
        if hashed is None:  # all zeros: a hole in the index, nothing to send
            release()
            self.progress.advance(cell.size)
            return
        if isinstance(hashed, bytes):  # format 2: the cell's block digests
            assert self.builder is not None
            whole = self.builder.cell(cell.path, cell.offset, view, hashed)
            if whole is None:  # reused, packed or zero: nothing of this buffer is needed any more
                release()
                self.progress.advance(cell.size)
                return
            hashed = whole
        else:
            self.found[cell.path].append(Chunk(cell.offset, cell.size, hashed))
        self._enqueue(_Item(hashed, view, ((cell.path, cell.offset, cell.size),), release, cell.size))

    def emit(self, new: NewObject) -> None:
        """A packed object the builder sealed (format 2): sent like a cell, from its own buffer."""
        self._enqueue(_Item(new.digest, new.data, new.segments, self._packs.release, 0))

    def _enqueue(self, item: _Item) -> None:
        if item.digest in self.known or any(item.digest == queued.digest for queued in self._batch):
            item.release()  # the same bytes elsewhere in the bundle: one object serves both
            self.progress.advance(item.progress)
            return
        self._batch.append(item)
        if len(self._batch) >= self.batch_cells:
            self._ask()

    def _ask(self) -> None:
        """Hand the batch to the asking thread (one, so answers keep the bundle's order) and go on
        reading while the catalog answers: a round trip never stalls the pass."""
        if not self._batch:
            return
        self._raise_if_failed()
        batch, self._batch = self._batch, []
        self.known.update(item.digest for item in batch)
        self._asked.append(self._asking.submit(self._answer, batch))
        while self._asked and self._asked[0].done():
            self._asked.popleft().result()

    def _answer(self, batch: list[_Item]) -> None:
        """Which of the batch the catalog has verified already; the rest go to be sent."""
        try:
            self._raise_if_failed()
            digests = [item.digest for item in batch]
            answer = _retrying(self.config, lambda: self.api.upload_chunks(self.upload_id, digests))
        except BaseException as exc:
            for item in batch:
                item.release()
            self._fail(exc)
            raise
        stored = set(answer["stored"])
        self.put_headers = dict(answer.get("put_headers") or self.put_headers)
        for item in batch:
            if item.digest in stored:
                self.reused_bytes += len(item.data)
                item.release()
                self.progress.advance(item.progress)
            else:
                future = self._sending.submit(self._upload, item, answer["urls"][item.digest])
                with self._lock:
                    self._uploads.add(future)
                future.add_done_callback(self._uploaded)

    def _uploaded(self, future: Future[None]) -> None:
        with self._lock:
            self._uploads.discard(future)

    def _wait_uploads(self) -> None:
        while True:
            with self._lock:
                pending = list(self._uploads)
            if not pending:
                return
            for future in pending:
                future.result()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    # ---- the workers -------------------------------------------------------------------------
    def _read(self, cell: _Cell, buffer: bytearray) -> str | bytes | None:
        """Read a cell once, into its buffer: None for all zeros, else its digest (format 1) or its
        blocks' raw digests (formats 2 and 3)."""
        try:
            self._raise_if_failed()
            view = memoryview(buffer)[: cell.size]
            read_cell_into(cell.fd, self.root / cell.path, cell.offset, view)
            if is_zero(view):
                return None
            naming = self.naming
            return naming.digest(view) if naming.block_size is None else naming.block_digests(view)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _read_again(self, path: str, offset: int, length: int) -> bytes:
        data = read_cell(self.root / path, offset, length)
        if _fingerprint(self.root / path) != self.fingerprints[path]:
            raise Conflict(f"{path} changed while pushing; stop the VM and push again")
        return data

    def _upload(self, item: _Item, url: str) -> None:
        """Compress, give the buffer back at once (the next cell can be read into it while this
        object travels), then PUT."""
        held = True
        try:
            out = self._outs.get_nowait()
        except queue.Empty:  # anonymous memory: its pages are taken only when written (a bytearray zeroes them)
            out = mmap.mmap(-1, compressed_bound(self.config.chunk_size))
        try:
            self._raise_if_failed()
            blob = compress(item.data, self.config.level, out)
            item.release()
            held = False
            self._send(item.digest, blob, url)
            del blob  # a view of ``out``, which goes back to the pool below
            with self._lock:
                self._sources[item.digest] = item.segments
                self._to_verify.append(item.digest)
                if len(self._to_verify) >= VERIFY_PAGE or not self._verifies_running:
                    self._submit_verify()  # a full page, or the verifier is idle: keep the tail short
            self.progress.advance(item.progress)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            if held:
                item.release()
            self._outs.put(out)

    def _send(self, object_digest: str, blob: bytes | memoryview, url: str | None) -> None:
        if self.config.chunk_delay:
            time.sleep(self.config.chunk_delay)
        what = f"chunk {object_digest[:12]}"
        with contextlib.suppress(_StoredMeanwhile):

            def refresh() -> str:
                return self._fresh_url(object_digest)

            self.blobs.put(url or refresh(), blob, what, self.put_headers, refresh=refresh)
        with self._lock:
            self.uploaded_bytes += len(blob)
            self.uploaded_chunks += 1

    def _fresh_url(self, object_digest: str) -> str:
        answer = _retrying(self.config, lambda: self.api.upload_chunks(self.upload_id, [object_digest]))
        url = answer["urls"].get(object_digest)
        if url is None:
            raise _StoredMeanwhile(object_digest)
        return url

    # ---- verification ------------------------------------------------------------------------
    def _submit_verify(self) -> None:
        """Called with the lock held."""
        batch, self._to_verify = self._to_verify, []
        if batch:
            self._verifies_running += 1
            self._verdicts.append(self._verifying.submit(self._verify, batch))

    def _verify(self, batch: list[str]) -> None:
        try:
            self._check(batch)
        finally:
            with self._lock:
                self._verifies_running -= 1

    def _check(self, batch: list[str]) -> None:
        """An object the server refuses is read and sent once more, then the push fails."""
        answer = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, batch))
        refused = answer["corrupt"] + answer["missing"]
        if refused:
            log.warning("the catalog refused %d chunk(s); sending them again", len(refused))
            for object_digest in refused:
                segments = self._sources[object_digest]
                data = b"".join(read_cell(self.root / path, offset, length) for path, offset, length in segments)
                if self.naming.digest(data) != object_digest:
                    raise Conflict(f"{segments[0][0]} changed while pushing; stop the VM and push again")
                self._send(object_digest, compress(data, self.config.level), None)
            again = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, refused))
            if again["corrupt"] or again["missing"]:
                bad = (again["corrupt"] + again["missing"])[0]
                raise ChunkCorrupt(
                    f"the catalog refused chunk {bad[:12]} twice (it did not arrive intact); check the network "
                    "or storage, then push again: verified chunks are kept"
                )
        with self._lock:
            for object_digest in batch:
                self._sources.pop(object_digest, None)


def push(
    api: CatalogClient,
    root: Path,
    key: ManifestKey,
    *,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    base: str | None = None,
    config: TransferConfig | None = None,
    progress: Progress | None = None,
    blobs: BlobClient | None = None,
) -> PushResult:
    """Begin, send the bundle in one pass, declare and upload the index, commit (ADR 002).

    In index format 2 (the default, ADR 004) the push builds on ``base`` (a version of the same id
    and architecture; by default the newest the catalog offers) and sends only the blocks that changed.
    """
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a VM bundle folder" if root.exists() else f"{root} does not exist")
    entries = scan_tree(root)
    # (size, mtime) of every file before reading: a cell read from a file whose fingerprint moved may
    # not match its digest, so the push stops instead of storing a lie.
    fingerprints = {e.path: _fingerprint(root / e.path) for e in entries if e.type == FILE}
    PackIndex.parse(PackIndex(config.chunk_size, tuple(entries)).to_json())  # paths, counts, sizes: before a byte
    block_size = _block_size(root, entries, config)
    body: dict[str, Any] = {"chunk_size": config.chunk_size, "force": force, **(metadata or {})}
    if block_size is not None:
        body.update(format=config.pack_format, block_size=block_size)
        if base is not None:
            body["base"] = base
    elif base is not None:
        raise InvalidInput("--base needs an incremental index format (this push uses format 1)")
    try:
        session = api.push_begin(key.catalog_id, key.version, key.architecture, body)
    except InvalidInput as exc:  # a catalog from before format 3 ("format must be 1 or 2"): push format 2
        if body.get("format") != FORMAT_BLAKE3 or not str(exc).startswith("format must be"):
            raise
        session = api.push_begin(key.catalog_id, key.version, key.architecture, {**body, "format": FORMAT_EXTENTS})
        body["format"] = FORMAT_EXTENTS
    # the catalog's word: a format-3 push whose base is in format 2 stays in format 2 (ADR 005)
    fmt = session.get("format", body.get("format", 1))
    if block_size is not None and fmt not in EXTENT_FORMATS:
        raise InvalidInput(f"the catalog answered index format {fmt!r} for an incremental push; update pdcat")
    upload_id: str = session["upload_id"]
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(
        connections=config.workers * 2, retries=config.retries, backoff=config.backoff, trust=api.trust
    )
    one_pass = _Pass(
        api, upload_id, root, fingerprints, blob_client, config, progress, dict(session.get("put_headers") or {})
    )
    if block_size is not None:
        naming = Naming(fmt, block_size)
        base_map = _base_map(api, upload_id, blob_client, config, session.get("base"), naming, base)
        one_pass.builder = ExtentsBuilder(naming, config.chunk_size, base_map, one_pass.emit, one_pass.pack_buffer)
        one_pass.naming = naming
    progress.start("pushing", sum(e.size for e in entries if e.type == FILE))
    try:
        one_pass.run(entries)
        for entry in entries:
            if entry.type == FILE and os.lstat(root / entry.path).st_size != entry.size:
                raise Conflict(f"{entry.path} changed size while being pushed; stop the VM and try again")
        if one_pass.builder is not None:
            index = one_pass.builder.index(entries)
            one_pass.reused_bytes += one_pass.builder.reused_bytes
        else:
            files = tuple(
                FileEntry(e.path, e.type, e.mode, e.size, tuple(one_pass.found[e.path]), e.target)
                if e.type == FILE
                else e
                for e in entries
            )
            index = PackIndex(config.chunk_size, files)
        index_bytes = index.canonical_bytes()
        if len(index_bytes) > MAX_INDEX_BYTES:
            raise InvalidInput(f"the pack index is {len(index_bytes)} bytes, more than the catalog takes")
        PackIndex.from_bytes(index_bytes)  # the catalog's own rules (sizes, counts, extents)
        declared = {"index_digest": hashlib.sha256(index_bytes).hexdigest(), "index_size": len(index_bytes)}
        target = _retrying(config, lambda: api.declare_index(upload_id, declared))
        blob_client.put(target["index_url"], index_bytes, "the pack index", target.get("put_headers") or {})
    except FileNotFoundError as exc:
        raise Conflict(f"a file vanished while {root} was being pushed; stop the VM and try again") from exc
    finally:
        progress.finish()
        if own_blobs:
            blob_client.close()
    manifest = _retrying(config, lambda: api.commit(upload_id))
    return PushResult(
        manifest=manifest,
        chunks=len(index.unique_digests()),
        uploaded_chunks=one_pass.uploaded_chunks,
        uploaded_bytes=one_pass.uploaded_bytes,
        reused_bytes=one_pass.reused_bytes,
        seconds=time.monotonic() - started,
    )


def _block_size(root: Path, entries: list[FileEntry], config: TransferConfig) -> int | None:
    """The block size of an incremental format (2 or 3) for this bundle, by its allocated bytes; None
    for format 1 (asked for, a grid that blocks do not divide, or a bundle too large for such an index)."""
    if config.pack_format not in EXTENT_FORMATS:
        return None
    allocated = sum(os.lstat(root / e.path).st_blocks * 512 for e in entries if e.type == FILE)
    block_size = choose_block_size(allocated)
    if block_size is None:
        return None
    fitting = [size for size in BLOCK_SIZES if size <= block_size and config.chunk_size % size == 0]
    return max(fitting, default=None)  # a small grid (--chunk-size) takes the largest block that divides it


def _base_map(
    api: CatalogClient,
    upload_id: str,
    blobs: BlobClient,
    config: TransferConfig,
    offered: dict[str, Any] | None,
    naming: Naming,
    requested: str | None,
) -> BaseMap | None:
    """The base version the catalog offered, if it can be built on: its index checked against its
    pack digest, in this push's block size, and only the objects the catalog confirms it still holds
    (asked a page at a time; they are then confirmed for this session's commit)."""
    if not offered:
        if requested is not None:
            log.warning(
                "the catalog offers no version %s to build on (none you can use, in an incremental index "
                "format, of this architecture); sending every block",
                requested,
            )
        return None
    data = blobs.get(offered["index_url"], "the base version's index")
    if hashlib.sha256(data).hexdigest() != offered.get("pack_digest"):
        raise ChunkCorrupt("the base version's index does not match its pack digest; refusing to build on it")
    index = PackIndex.from_bytes(data)
    del data
    if index.naming != naming or index.chunk_size != config.chunk_size:
        return None
    base = BaseMap(index)
    wanted = list(base.objects)
    stored: set[str] = set()
    for start in range(0, len(wanted), CHUNK_PAGE):
        page = wanted[start : start + CHUNK_PAGE]
        answer = _retrying(config, lambda page=page: api.upload_chunks(upload_id, page))  # type: ignore[misc]
        stored.update(answer["stored"])
    base.keep_only(stored)
    log.info("building on %s: %d of its %d objects are stored", offered.get("version"), len(stored), len(wanted))
    return base

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
from client.packer import ChunkCorrupt, compress, data_cells, digest, is_zero, read_cell, read_cell_into, scan_tree
from client.transfer.common import NoProgress, Progress, TransferConfig
from core.errors import Conflict, InvalidInput
from core.identity import ManifestKey
from core.pack import FILE, Chunk, FileEntry, PackIndex
from core.wire import CHUNK_PAGE, VERIFY_PAGE

__all__ = ["PushResult", "push"]

log = logging.getLogger("pdcat.transfer")
T = TypeVar("T")

_CELL_BUDGET_BYTES = 32 * 1024 * 1024
"""Raw cell buffers (being read and hashed, waiting for the catalog's answer, being compressed):
with one compressed chunk per transfer in flight, the push's memory, whatever the VM size."""


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


class _Stopped(Exception):
    """The pass is over (finished or failed): work still queued does nothing."""


class _StoredMeanwhile(Exception):
    """The catalog holds the chunk now (another pusher sent the same bytes): nothing to upload."""


class _Pass:
    """The one pass over the bundle: a coordinator (the calling thread) and a pool of workers.

    Workers read and hash cells (in order, a window ahead), then compress and PUT the ones the
    catalog lacks. The coordinator collects hashes in order, asks the catalog about them a batch at
    a time, and hands the missing ones back to the pool. A fixed pool of cell buffers bounds memory:
    a buffer is taken before a cell is read into it and given back once its bytes are no longer
    needed (all zeros, stored already, or sent).
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
    ) -> None:
        self.api, self.upload_id, self.root, self.fingerprints = api, upload_id, root, fingerprints
        self.blobs, self.config, self.progress, self.put_headers = blobs, config, progress, put_headers
        cells = max(4, _CELL_BUDGET_BYTES // config.chunk_size)
        hashers = max(2, os.cpu_count() or 2)
        self.window = max(2, min(hashers * 2, cells // 2))  # cells being read and hashed
        self.batch_cells = max(1, min(CHUNK_PAGE, cells - self.window))  # cells per catalog question
        self._buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(cells):
            self._buffers.put(bytearray(config.chunk_size))
        # Reading and hashing is CPU work: a pool the size of the machine. Sending mostly waits on
        # the network: ``workers`` transfers in flight, each holding one compressed chunk. Two pools,
        # so a read never queues behind an upload.
        self._hashing = ThreadPoolExecutor(hashers, thread_name_prefix="pdcat-hash")
        self._sending = ThreadPoolExecutor(config.workers, thread_name_prefix="pdcat-send")
        self._asking = ThreadPoolExecutor(1, thread_name_prefix="pdcat-ask")
        self._asked: deque[Future[None]] = deque()
        self._verifying = ThreadPoolExecutor(2, thread_name_prefix="pdcat-verify")
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._uploads: set[Future[None]] = set()
        self._verdicts: list[Future[None]] = []
        self._to_verify: list[str] = []
        self._verifies_running = 0
        self._sources: dict[str, _Cell] = {}  # uploaded, not yet verified: to send again if refused
        self.found: dict[str, list[Chunk]] = {}
        self.known: set[str] = set()  # digests this push has dealt with (stored, or sent)
        self.uploaded_bytes = self.uploaded_chunks = self.reused_bytes = 0

    # ---- the coordinator ---------------------------------------------------------------------
    def run(self, entries: list[FileEntry]) -> None:
        hashing: deque[tuple[_Cell, bytearray, Future[str | None]]] = deque()
        batch: list[tuple[_Cell, str, bytearray]] = []
        try:
            for entry in entries:
                if entry.type != FILE:
                    continue
                self.found[entry.path] = []
                cells = data_cells(self.root / entry.path, entry.size, self.config.chunk_size)
                holes = entry.size - sum(length for _, length in cells)
                if holes:
                    self.progress.advance(holes)
                for offset, length in cells:
                    while len(hashing) >= self.window:
                        self._collect(hashing.popleft(), batch)
                    buffer = self._take_buffer(hashing, batch)
                    cell = _Cell(entry.path, offset, length)
                    hashing.append((cell, buffer, self._hashing.submit(self._read, cell, buffer)))
            while hashing:
                self._collect(hashing.popleft(), batch)
            self._ask(batch)
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

    def _take_buffer(self, hashing: deque[Any], batch: list[tuple[_Cell, str, bytearray]]) -> bytearray:
        """Wait for a free buffer; the coordinator's own held cells are moved on meanwhile, so it
        never waits for buffers only it could free."""
        while True:
            try:
                return self._buffers.get(timeout=0.05)
            except queue.Empty:
                self._raise_if_failed()
                if hashing:
                    self._collect(hashing.popleft(), batch)
                elif batch:
                    self._ask(batch)

    def _collect(self, item: tuple[_Cell, bytearray, Future[str | None]], batch: list[Any]) -> None:
        cell, buffer, future = item
        cell_digest = future.result()
        if cell_digest is None:  # all zeros: a hole in the index, nothing to send
            self._buffers.put(buffer)
            self.progress.advance(cell.size)
            return
        self.found[cell.path].append(Chunk(cell.offset, cell.size, cell_digest))
        if cell_digest in self.known or any(cell_digest == d for _, d, _ in batch):
            self._buffers.put(buffer)  # the same bytes elsewhere in the bundle: one chunk serves both
            self.progress.advance(cell.size)
            return
        batch.append((cell, cell_digest, buffer))
        if len(batch) >= self.batch_cells:
            self._ask(batch)

    def _ask(self, batch: list[tuple[_Cell, str, bytearray]]) -> None:
        """Hand the batch to the asking thread (one, so answers keep the bundle's order) and go on
        reading while the catalog answers: a round trip never stalls the pass."""
        if not batch:
            return
        self._raise_if_failed()
        self.known.update(d for _, d, _ in batch)
        self._asked.append(self._asking.submit(self._answer, list(batch)))
        while self._asked and self._asked[0].done():
            self._asked.popleft().result()
        batch.clear()

    def _answer(self, batch: list[tuple[_Cell, str, bytearray]]) -> None:
        """Which of the batch the catalog has verified already; the rest go to be sent."""
        try:
            self._raise_if_failed()
            digests = [d for _, d, _ in batch]
            answer = _retrying(self.config, lambda: self.api.upload_chunks(self.upload_id, digests))
        except BaseException as exc:
            for _, _, buffer in batch:
                self._buffers.put(buffer)
            self._fail(exc)
            raise
        stored = set(answer["stored"])
        self.put_headers = dict(answer.get("put_headers") or self.put_headers)
        for cell, cell_digest, buffer in batch:
            if cell_digest in stored:
                self.reused_bytes += cell.size
                self._buffers.put(buffer)
                self.progress.advance(cell.size)
            else:
                url = answer["urls"][cell_digest]
                future = self._sending.submit(self._upload, cell, cell_digest, buffer, url)
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
    def _read(self, cell: _Cell, buffer: bytearray) -> str | None:
        """Read a cell once, into its buffer: its digest, or None for all zeros."""
        try:
            self._raise_if_failed()
            path = self.root / cell.path
            view = memoryview(buffer)[: cell.size]
            read_cell_into(path, cell.offset, view)
            if _fingerprint(path) != self.fingerprints[cell.path]:
                raise Conflict(f"{cell.path} changed while pushing; stop the VM and push again")
            return None if is_zero(view) else digest(view)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _upload(self, cell: _Cell, cell_digest: str, buffer: bytearray, url: str) -> None:
        """Compress, give the cell's buffer back at once (the next cell can be read into it while
        this one travels), then PUT."""
        held: bytearray | None = buffer
        try:
            self._raise_if_failed()
            blob = compress(memoryview(buffer)[: cell.size], self.config.level)
            self._buffers.put(buffer)
            held = None
            self._send(cell_digest, blob, url)
            with self._lock:
                self._sources[cell_digest] = cell
                self._to_verify.append(cell_digest)
                if len(self._to_verify) >= VERIFY_PAGE or not self._verifies_running:
                    self._submit_verify()  # a full page, or the verifier is idle: keep the tail short
            self.progress.advance(cell.size)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            if held is not None:
                self._buffers.put(held)

    def _send(self, cell_digest: str, blob: bytes, url: str | None) -> None:
        if self.config.chunk_delay:
            time.sleep(self.config.chunk_delay)
        what = f"chunk {cell_digest[:12]}"
        with contextlib.suppress(_StoredMeanwhile):

            def refresh() -> str:
                return self._fresh_url(cell_digest)

            self.blobs.put(url or refresh(), blob, what, self.put_headers, refresh=refresh)
        with self._lock:
            self.uploaded_bytes += len(blob)
            self.uploaded_chunks += 1

    def _fresh_url(self, cell_digest: str) -> str:
        answer = _retrying(self.config, lambda: self.api.upload_chunks(self.upload_id, [cell_digest]))
        url = answer["urls"].get(cell_digest)
        if url is None:
            raise _StoredMeanwhile(cell_digest)
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
        """A chunk the server refuses is read and sent once more, then the push fails."""
        answer = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, batch))
        refused = answer["corrupt"] + answer["missing"]
        if refused:
            log.warning("the catalog refused %d chunk(s); sending them again", len(refused))
            for cell_digest in refused:
                cell = self._sources[cell_digest]
                data = read_cell(self.root / cell.path, cell.offset, cell.size)
                if digest(data) != cell_digest:
                    raise Conflict(f"{cell.path} changed while pushing; stop the VM and push again")
                self._send(cell_digest, compress(data, self.config.level), None)
            again = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, refused))
            if again["corrupt"] or again["missing"]:
                bad = (again["corrupt"] + again["missing"])[0]
                raise ChunkCorrupt(
                    f"the catalog refused chunk {bad[:12]} twice (it did not arrive intact); check the network "
                    "or storage, then push again: verified chunks are kept"
                )
        with self._lock:
            for cell_digest in batch:
                self._sources.pop(cell_digest, None)


def push(
    api: CatalogClient,
    root: Path,
    key: ManifestKey,
    *,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    config: TransferConfig | None = None,
    progress: Progress | None = None,
    blobs: BlobClient | None = None,
) -> PushResult:
    """Begin, send the bundle in one pass, declare and upload the index, commit (ADR 002)."""
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
    body: dict[str, Any] = {"chunk_size": config.chunk_size, "force": force, **(metadata or {})}
    session = api.push_begin(key.catalog_id, key.version, key.architecture, body)
    upload_id: str = session["upload_id"]
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)
    one_pass = _Pass(
        api, upload_id, root, fingerprints, blob_client, config, progress, dict(session.get("put_headers") or {})
    )
    progress.start("pushing", sum(e.size for e in entries if e.type == FILE))
    try:
        one_pass.run(entries)
        for entry in entries:
            if entry.type == FILE and os.lstat(root / entry.path).st_size != entry.size:
                raise Conflict(f"{entry.path} changed size while being pushed; stop the VM and try again")
        files = tuple(
            FileEntry(e.path, e.type, e.mode, e.size, tuple(one_pass.found[e.path]), e.target) if e.type == FILE else e
            for e in entries
        )
        index = PackIndex(config.chunk_size, files)
        PackIndex.parse(index.to_json())  # the catalog's own rules (sizes, counts)
        index_bytes = index.canonical_bytes()
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

"""Push: index the bundle (holes and zero runs skipped, every chunk hashed) → declare the index and
upload it to the session's staging area → a page of digests at a time, ask which chunks are verified
already, compress and PUT the rest, several in flight, and have them verified as they land → commit
(ADR 002). A killed push, run again, re-asks which chunks are missing: finished ones are in storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from client.api import CatalogClient
from client.blobio import BlobClient
from client.packer import ChunkCorrupt, build_index, compress, read_cell
from client.pool import run_bounded
from client.transfer.common import NoProgress, Progress, TransferConfig
from core.errors import Conflict, InvalidInput
from core.identity import ManifestKey
from core.pack import PackIndex
from core.wire import CHUNK_PAGE, VERIFY_PAGE

__all__ = ["PushResult", "push"]

log = logging.getLogger("pdcat.transfer")
T = TypeVar("T")


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


def _fingerprints(root: Path) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every regular file, taken before indexing: a chunk read later from a file whose
    fingerprint moved may not match its digest, so the push stops instead of storing a lie. Cheaper
    than hashing every chunk a second time."""
    return {p: _fingerprint(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _retrying(config: TransferConfig, call: Callable[[], T]) -> T:
    """A catalog call that may answer 503 (garbage collection is sweeping, a cold start): retried as
    the policy says; the catalog's own last error is raised."""
    return config.policy.run(call, "a catalog request", give_up=lambda last: last)


def _pages(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _StoredMeanwhile(Exception):
    """The catalog holds the chunk now (another pusher sent the same bytes): nothing to upload."""


class _Uploader:
    """Uploads the chunks one page of the catalog's answers names, and has them verified in pages
    as they land: a chunk the server refuses is read and sent once more, then the push fails."""

    def __init__(
        self,
        api: CatalogClient,
        upload_id: str,
        root: Path,
        sources: dict[str, tuple[Path, int, int]],
        fingerprints: dict[Path, tuple[int, int]],
        blobs: BlobClient,
        config: TransferConfig,
        progress: Progress,
        put_headers: dict[str, str],
    ) -> None:
        self.api, self.upload_id, self.root, self.sources = api, upload_id, root, sources
        self.fingerprints, self.blobs, self.config, self.progress = fingerprints, blobs, config, progress
        self.put_headers = put_headers
        self.urls: dict[str, str] = {}
        self.uploaded_bytes = 0
        self.uploaded_chunks = 0
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._verifying = ThreadPoolExecutor(2, thread_name_prefix="pdcat-verify")
        self._verdicts: list[Future[None]] = []

    def _url(self, digest: str, fresh: bool = False) -> str:
        with self._lock:
            url = None if fresh else self.urls.get(digest)
        if url is None:
            answer = _retrying(self.config, lambda: self.api.upload_chunks(self.upload_id, [digest]))
            url = answer["urls"].get(digest)
            if url is None:
                raise _StoredMeanwhile(digest)
            with self._lock:
                self.urls[digest] = url
        return url

    def send(self, digest: str, *, count: bool = True) -> None:
        if self.config.chunk_delay:
            time.sleep(self.config.chunk_delay)
        path, offset, size = self.sources[digest]
        data = read_cell(path, offset, size)
        if _fingerprint(path) != self.fingerprints[path]:
            raise Conflict(f"{path.relative_to(self.root)} changed while pushing; stop the VM and push again")
        blob = compress(data, self.config.level)
        del data
        with contextlib.suppress(_StoredMeanwhile):
            what, refresh = f"chunk {digest[:12]}", lambda: self._url(digest, fresh=True)
            self.blobs.put(self._url(digest), blob, what, self.put_headers, refresh=refresh)
        with self._lock:
            self.uploaded_bytes += len(blob)
            self.uploaded_chunks += 1
            if count:
                self._pending.append(digest)
                if len(self._pending) >= VERIFY_PAGE:
                    self._submit_verify()
        if count:
            self.progress.advance(size)

    def _submit_verify(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._verdicts.append(self._verifying.submit(self._verify, batch))

    def _verify(self, batch: list[str]) -> None:
        answer = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, batch))
        refused = answer["corrupt"] + answer["missing"]
        if not refused:
            return
        log.warning("the catalog refused %d chunk(s); sending them again", len(refused))
        for digest in refused:
            self.send(digest, count=False)
        again = _retrying(self.config, lambda: self.api.verify_chunks(self.upload_id, refused))
        if again["corrupt"] or again["missing"]:
            bad = (again["corrupt"] + again["missing"])[0]
            raise ChunkCorrupt(
                f"the catalog refused chunk {bad[:12]} twice (it did not arrive intact); check the network "
                "or storage, then push again: verified chunks are kept"
            )

    def finish(self) -> None:
        """Verify what is still pending and wait for every verdict; the first failure is raised."""
        with self._lock:
            self._submit_verify()
        try:
            for verdict in self._verdicts:
                verdict.result()
        finally:
            self._verifying.shutdown(wait=True, cancel_futures=True)

    def abandon(self) -> None:
        self._verifying.shutdown(wait=True, cancel_futures=True)


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
    """Index, declare the index, upload it to storage, then page through the chunks: ask which are
    verified already, upload the rest to staging, have them verified; commit (ADR 002)."""
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a VM bundle folder" if root.exists() else f"{root} does not exist")
    fingerprints = _fingerprints(root)
    progress.start("indexing", sum(size for size, _ in fingerprints.values()))
    index = build_index(root, config.chunk_size, workers=config.workers, on_progress=progress.advance)
    progress.finish()
    PackIndex.parse(index.to_json())  # the catalog's own rules (sizes, counts), before a byte is sent

    index_bytes = index.canonical_bytes()
    body: dict[str, Any] = {
        "index_digest": hashlib.sha256(index_bytes).hexdigest(),
        "index_size": len(index_bytes),
        "chunk_size": index.chunk_size,
        "force": force,
        **(metadata or {}),
    }
    session = api.push_begin(key.catalog_id, key.version, key.architecture, body)
    upload_id: str = session["upload_id"]
    put_headers: dict[str, str] = dict(session.get("put_headers") or {})
    sources: dict[str, tuple[Path, int, int]] = {}
    for entry in index.files:
        for chunk in entry.chunks:
            sources.setdefault(chunk.digest, (root / entry.path, chunk.offset, chunk.size))

    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)
    uploader = _Uploader(api, upload_id, root, sources, fingerprints, blob_client, config, progress, put_headers)
    reused_bytes = 0
    progress.start("uploading", sum(size for _, _, size in sources.values()))
    try:
        blob_client.put(session["index_url"], index_bytes, "the pack index", put_headers)
        for page in _pages(list(sources), CHUNK_PAGE):
            answer = _retrying(config, lambda page=page: api.upload_chunks(upload_id, page))  # type: ignore[misc]
            stored = set(answer["stored"])
            reused = sum(sources[d][2] for d in stored)
            reused_bytes += reused
            progress.advance(reused)
            uploader.urls.update(answer["urls"])
            run_bounded([d for d in page if d not in stored], uploader.send, config.workers)
        uploader.finish()
    except BaseException:
        uploader.abandon()
        raise
    finally:
        progress.finish()
        if own_blobs:
            blob_client.close()
    manifest = _retrying(config, lambda: api.commit(upload_id))
    return PushResult(
        manifest=manifest,
        chunks=len(sources),
        uploaded_chunks=uploader.uploaded_chunks,
        uploaded_bytes=uploader.uploaded_bytes,
        reused_bytes=reused_bytes,
        seconds=time.monotonic() - started,
    )

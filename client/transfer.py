"""Push and pull of a VM bundle through presigned URLs.

Push: index the bundle (holes and zero runs skipped, every chunk hashed) → ask the catalog which
chunks it lacks → read, compress and PUT only those, several in flight → commit.
Pull: resolve → check the index against the manifest's pack digest → GET, verify, decompress and
write each chunk at its offsets into sparse files in a hidden ``.partial`` folder → rename into place.

Interrupted transfers resume: a push re-asks which chunks are missing (finished ones are in storage);
a pull keeps a journal of finished chunks next to its partial folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from client.api import CatalogClient
from client.blobio import BlobClient, UrlBook, UrlRefused
from client.packer import (
    ChunkCorrupt,
    build_index,
    compress,
    decompress,
    digest,
    finalize_tree,
    prepare_tree,
    read_cell,
    write_chunk,
)
from client.pool import run_bounded
from core.errors import Conflict, InvalidInput, PdcatError
from core.identity import ManifestKey
from core.pack import DEFAULT_CHUNK_SIZE, Chunk, FileEntry, PackIndex

__all__ = [
    "NoProgress",
    "Progress",
    "PullResult",
    "PushResult",
    "TransferConfig",
    "partial_paths",
    "pull",
    "push",
]

log = logging.getLogger("pdcat.transfer")


class DiskFull(PdcatError):
    """The destination ran out of space; nothing was left half-written."""


def _debug_delay() -> float:
    """``PDCAT_DEBUG_CHUNK_DELAY`` (seconds per chunk) slows transfers down so fault-injection tests
    can kill a process or let URLs expire at a known point. Never set in normal use."""
    try:
        return max(0.0, float(os.environ.get("PDCAT_DEBUG_CHUNK_DELAY", "0")))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class TransferConfig:
    workers: int = max(2, min(8, (os.cpu_count() or 2) * 2))
    chunk_size: int = DEFAULT_CHUNK_SIZE
    level: int = 3
    retries: int = 5
    backoff: float = 0.5
    chunk_delay: float = field(default_factory=_debug_delay)


class Progress(Protocol):
    """A subscriber: a rich bar is one implementation, ``NoProgress`` another."""

    def start(self, phase: str, total: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class PushResult:
    manifest: dict[str, Any]
    chunks: int
    uploaded_chunks: int
    uploaded_bytes: int
    reused_bytes: int
    seconds: float


@dataclass
class PullResult:
    path: Path
    manifest: dict[str, Any]
    chunks: int
    downloaded_chunks: int
    downloaded_bytes: int
    resumed_chunks: int
    seconds: float
    registered: bool = False
    notes: list[str] = field(default_factory=list)


# ---- push -------------------------------------------------------------------------------------
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
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a VM bundle folder" if root.exists() else f"{root} does not exist")
    size_hint = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    progress.start("indexing", size_hint)
    index = build_index(root, config.chunk_size, workers=config.workers, on_progress=progress.advance)
    progress.finish()

    body: dict[str, Any] = {"index": index.to_json(), "force": force, **(metadata or {})}
    session = api.push_begin(key.catalog_id, key.version, key.architecture, body)
    upload_id: str = session["upload_id"]
    missing = [m["digest"] for m in session["missing"]]
    sources: dict[str, tuple[Path, int, int]] = {}
    for entry in index.files:
        for chunk in entry.chunks:
            sources.setdefault(chunk.digest, (root / entry.path, chunk.offset, chunk.size))

    urls = UrlBook(session["urls"], missing, lambda ds: api.upload_urls(upload_id, ds), max(1, len(session["urls"])))
    stored_sizes: dict[str, int] = {}
    lock = threading.Lock()
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)

    def upload(chunk_digest: str) -> None:
        if config.chunk_delay:
            time.sleep(config.chunk_delay)
        path, offset, size = sources[chunk_digest]
        data = read_cell(path, offset, size)
        if digest(data) != chunk_digest:
            raise Conflict(f"{path.relative_to(root)} changed while pushing; stop the VM and push again")
        blob = compress(data, config.level)
        del data
        what = f"chunk {chunk_digest[:12]}"
        try:
            blob_client.put(urls.get(chunk_digest), blob, what)
        except UrlRefused:
            blob_client.put(urls.refresh(chunk_digest), blob, what)
        with lock:
            stored_sizes[chunk_digest] = len(blob)
        progress.advance(size)

    progress.start("uploading", sum(sources[d][2] for d in missing))
    try:
        run_bounded(missing, upload, config.workers)
    finally:
        progress.finish()
        if own_blobs:
            blob_client.close()
    manifest = api.commit(upload_id, stored_sizes)
    return PushResult(
        manifest=manifest,
        chunks=len(sources),
        uploaded_chunks=len(stored_sizes),
        uploaded_bytes=sum(stored_sizes.values()),
        reused_bytes=int(session.get("reused_bytes", 0)),
        seconds=time.monotonic() - started,
    )


# ---- pull -------------------------------------------------------------------------------------
def partial_paths(final: Path) -> tuple[Path, Path]:
    """Hidden work folder and journal of a pull into ``final``; both live next to it."""
    return final.with_name(f".{final.name}.pdcat-partial"), final.with_name(f".{final.name}.pdcat-journal")


def _read_journal(journal: Path, pack_digest: str) -> set[str]:
    try:
        lines = journal.read_text().split()
    except FileNotFoundError:
        return set()
    if not lines or lines[0] != pack_digest:
        return set()
    return set(lines[1:])


def pull(
    api: CatalogClient,
    catalog_id: str,
    version: str,
    architecture: str,
    dest_dir: Path,
    *,
    name: str | None = None,
    config: TransferConfig | None = None,
    progress: Progress | None = None,
    blobs: BlobClient | None = None,
    on_resolved: Callable[[dict[str, Any], PackIndex, Path], None] | None = None,
) -> PullResult:
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    answer = api.pull(catalog_id, version, architecture)
    manifest: dict[str, Any] = answer["manifest"]
    index = PackIndex.parse(answer["index"])
    if index.digest != manifest["pack"]["digest"]:
        raise ChunkCorrupt("the pack index does not match the manifest's pack digest; refusing to pull it")
    bundle_name = name or manifest["catalog_id"]
    if "/" in bundle_name or bundle_name.startswith("."):
        raise InvalidInput(f"invalid VM name {bundle_name!r}")
    final = dest_dir / f"{bundle_name}.{manifest['vm_type']}"
    if final.exists():
        raise Conflict(f"{final} already exists; pick another --name or remove it first")
    if on_resolved is not None:
        on_resolved(manifest, index, final)
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial, journal = partial_paths(final)

    done = _read_journal(journal, index.digest) if partial.is_dir() else set()
    if not done:
        shutil.rmtree(partial, ignore_errors=True)
        prepare_tree(partial, index)
        journal.write_text(index.digest + "\n")
    places: dict[str, list[tuple[FileEntry, Chunk]]] = {}
    for entry in index.files:
        for chunk in entry.chunks:
            places.setdefault(chunk.digest, []).append((entry, chunk))
    todo = [d for d in places if d not in done]
    needed = sum(places[d][0][1].size for d in todo)
    free = shutil.disk_usage(dest_dir).free
    if needed > free:
        raise DiskFull(f"not enough space in {dest_dir}: the pull needs {needed} more bytes, {free} are free")

    key = (manifest["catalog_id"], manifest["version"], manifest["architecture"])
    first = {d: u for d, u in answer["urls"].items() if d in set(todo)}
    urls = UrlBook(first, todo, lambda ds: api.pull_urls(*key, ds), max(1, len(answer["urls"])))
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)
    counters = {"chunks": 0, "bytes": 0}
    lock = threading.Lock()
    journal_file = journal.open("a")

    def fetch(chunk_digest: str) -> None:
        if config.chunk_delay:
            time.sleep(config.chunk_delay)
        size = places[chunk_digest][0][1].size
        what = f"chunk {chunk_digest[:12]}"
        raw: bytes | None = None
        for attempt in range(2):  # a corrupt chunk is fetched once more before giving up
            try:
                url = urls.get(chunk_digest) if attempt == 0 else urls.refresh(chunk_digest)
                try:
                    blob = blob_client.get(url, what)
                except UrlRefused:
                    blob = blob_client.get(urls.refresh(chunk_digest), what)
                raw = decompress(blob, chunk_digest, size)
                break
            except ChunkCorrupt:
                if attempt == 1:
                    raise
                log.warning("corrupt chunk, fetching again", extra={"digest": chunk_digest[:12]})
        assert raw is not None
        for entry, chunk in places[chunk_digest]:
            write_chunk(partial, entry, chunk, raw)
        with lock:
            journal_file.write(chunk_digest + "\n")
            journal_file.flush()
            counters["chunks"] += 1
            counters["bytes"] += len(blob)
        progress.advance(size)

    progress.start("downloading", needed)
    try:
        run_bounded(todo, fetch, config.workers)
        finalize_tree(partial, index)
    except OSError as exc:
        _discard(partial, journal)
        if exc.errno == 28:  # ENOSPC
            raise DiskFull(f"{dest_dir} ran out of space; the partial VM was removed") from exc
        raise
    except (ChunkCorrupt, InvalidInput):
        _discard(partial, journal)  # resuming cannot fix bad data in storage or a bad index
        raise
    finally:
        journal_file.close()
        progress.finish()
        if own_blobs:
            blob_client.close()
    os.rename(partial, final)
    journal.unlink(missing_ok=True)
    return PullResult(
        path=final,
        manifest=manifest,
        chunks=len(places),
        downloaded_chunks=counters["chunks"],
        downloaded_bytes=counters["bytes"],
        resumed_chunks=len(done),
        seconds=time.monotonic() - started,
    )


def _discard(partial: Path, journal: Path) -> None:
    """Leave nothing half-written behind after a failure that resuming cannot fix."""
    shutil.rmtree(partial, ignore_errors=True)
    journal.unlink(missing_ok=True)

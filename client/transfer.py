"""Push and pull of a VM bundle through presigned URLs.

Push: index the bundle (holes and zero runs skipped, every chunk hashed) → ask the catalog which
chunks it lacks → read, compress and PUT only those, several in flight → commit.
Pull: resolve → check the index against the manifest's pack digest → GET, verify, decompress and
write each chunk at its offsets into sparse files in a hidden ``.partial`` folder → rename into place.

Interrupted transfers resume: a push re-asks which chunks are missing (finished ones are in storage);
a pull keeps a journal of finished chunks next to its partial folder.

A version the catalog imported in the original product's format (one ``.pdpack``) is pulled by
``client.pdpack_pull`` instead: one URL streamed into the safe unpacker, past the cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from filelock import FileLock

from client.api import CatalogClient
from client.blobio import BlobClient, UrlBook, UrlRefused
from client.cache import CacheEntry, VmCache, cache_dir
from client.clone import supports_reflink
from client.packer import (
    ChunkCorrupt,
    build_index,
    compress,
    decompress,
    finalize_tree,
    prepare_tree,
    read_cell,
    write_chunk,
)
from client.pool import run_bounded
from core.errors import Conflict, Gone, InvalidInput, NotFound, PdcatError, Unavailable
from core.identity import ManifestKey
from core.pack import DEFAULT_CHUNK_SIZE, Chunk, FileEntry, PackIndex
from core.wire import CHUNK_PAGE, MAX_INDEX_BYTES, VERIFY_PAGE

if TYPE_CHECKING:
    from client.pdpack_pull import PackDownload

__all__ = [
    "DiskFull",
    "NoProgress",
    "Progress",
    "PullPlan",
    "PullResult",
    "PushResult",
    "TransferConfig",
    "partial_paths",
    "pull",
    "push",
]

log = logging.getLogger("pdcat.transfer")
T = TypeVar("T")


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
    reused_chunks: int = 0
    reused_bytes: int = 0
    cache: str = "off"
    clone_method: str | None = None


def _fingerprint(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _fingerprints(root: Path) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every regular file, taken before indexing: a chunk read later from a file whose
    fingerprint moved may not match its digest, so the push stops instead of storing a lie. Cheaper
    than hashing every chunk a second time."""
    return {p: _fingerprint(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


# ---- push -------------------------------------------------------------------------------------
def _retrying(config: TransferConfig, call: Callable[[], T]) -> T:
    """A catalog call that may answer 503 (garbage collection is sweeping, a cold start): retried
    with backoff; the last error is raised."""
    for attempt in range(config.retries + 1):
        try:
            return call()
        except Unavailable:
            if attempt == config.retries:
                raise
            time.sleep(min(config.backoff * 2**attempt * (0.5 + random.random()), 30.0))
    raise AssertionError("unreachable")


def _pages(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
            if url is None:  # verified meanwhile (another pusher sent the same bytes)
                return ""
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
        what = f"chunk {digest[:12]}"
        url = self._url(digest)
        if url:
            try:
                self.blobs.put(url, blob, what, self.put_headers)
            except UrlRefused:
                url = self._url(digest, fresh=True)
                if url:
                    self.blobs.put(url, blob, what, self.put_headers)
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


# ---- pull -------------------------------------------------------------------------------------
LocalChunks = Callable[[str], "bytes | None"]
"""Raw, verified bytes of a chunk found on this machine (another cached version), or None."""


@dataclass(frozen=True)
class PullPlan:
    """What a pull will cost, shown before it starts."""

    manifest: dict[str, Any]
    index: PackIndex | None  # None for an original-format pack (one object, no index)
    final: Path
    cache: str  # "hit" | "miss" | "off"
    download_bytes: int  # compressed bytes to fetch
    download_chunks: int
    reused_bytes: int  # raw bytes taken from this machine instead of the network
    write_bytes: int  # bytes that will land on disk (data only; holes cost nothing)
    free_after: int


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


def _places(index: PackIndex) -> dict[str, list[tuple[FileEntry, Chunk]]]:
    places: dict[str, list[tuple[FileEntry, Chunk]]] = {}
    for entry in index.files:
        for chunk in entry.chunks:
            places.setdefault(chunk.digest, []).append((entry, chunk))
    return places


@dataclass
class DownloadStats:
    downloaded_chunks: int = 0
    downloaded_bytes: int = 0
    reused_chunks: int = 0
    reused_bytes: int = 0
    resumed_chunks: int = 0


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
) -> DownloadStats:
    """Fill ``final`` with the pack: verified chunks written at their offsets into sparse files.

    Work happens in a hidden partial folder with a journal of finished chunks, so a killed pull
    resumes; the folder is renamed to ``final`` only when every chunk is in and verified.
    """
    partial, journal = partial_paths(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _pull_lock(final):
        if final.exists():
            raise Conflict(f"{final} already exists; pick another --name or remove it first")
        done = _read_journal(journal, index.digest) if partial.is_dir() else set()
        places = _places(index)
        todo = [d for d in places if d not in done]
        stats = DownloadStats(resumed_chunks=len(done))
        key = (manifest["catalog_id"], manifest["version"], manifest["architecture"])
        wanted = set(todo)
        urls = UrlBook(
            {d: u for d, u in first_urls.items() if d in wanted},
            todo,
            lambda ds: api.pull_urls(*key, ds),
            CHUNK_PAGE,
        )
        lock = threading.Lock()
        journal_file: Any = None

        def fetch(chunk_digest: str) -> None:
            if config.chunk_delay:
                time.sleep(config.chunk_delay)
            size = places[chunk_digest][0][1].size
            raw = local(chunk_digest) if local is not None else None
            fetched = 0
            if raw is None:
                try:
                    raw, fetched = _fetch_verified(blobs, urls, chunk_digest, size)
                except ChunkCorrupt as exc:
                    raise _reported(api, key, chunk_digest, exc) from exc
            for entry, chunk in places[chunk_digest]:
                write_chunk(partial, entry, chunk, raw)
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

        progress.start("downloading", sum(places[d][0][1].size for d in todo))
        try:
            if not done:
                shutil.rmtree(partial, ignore_errors=True)
                prepare_tree(partial, index)
                journal.write_text(index.digest + "\n")
            journal_file = journal.open("a")
            run_bounded(todo, fetch, config.workers)
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


@contextlib.contextmanager
def _pull_lock(final: Path) -> Iterator[None]:
    """Two pulls into the same place would share one partial folder: the second waits for the first.
    The lock lives in the cache's lock folder (lock files must outlive their holders), not in dest."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(final.resolve()).encode()).hexdigest()[:24]
    with FileLock(str(locks / f"pull-{name}.lock")):
        yield


def _fetch_verified(blobs: BlobClient, urls: UrlBook, chunk_digest: str, size: int) -> tuple[bytes, int]:
    """GET, decompress and verify one chunk; a corrupt one is fetched once more before giving up."""
    what = f"chunk {chunk_digest[:12]}"
    for attempt in range(2):
        url = urls.get(chunk_digest) if attempt == 0 else urls.refresh(chunk_digest)
        try:
            blob = blobs.get(url, what)
        except UrlRefused:
            blob = blobs.get(urls.refresh(chunk_digest), what)
        try:
            return decompress(blob, chunk_digest, size), len(blob)
        except ChunkCorrupt:
            if attempt == 1:
                raise
            log.warning("chunk %s failed verification; fetching it again", chunk_digest[:12])
    raise AssertionError("unreachable")


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


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
    cache: VmCache | None = None,
    on_plan: Callable[[PullPlan], None] | None = None,
    on_evict: Callable[[CacheEntry], None] | None = None,
) -> PullResult:
    """Resolve, plan, then materialise from the cache or download (into the cache when there is one)."""
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    answer = api.pull(catalog_id, version, architecture)
    manifest: dict[str, Any] = answer["manifest"]
    legacy = None
    index: PackIndex | None = None
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)
    try:
        if answer.get("format") == "pdpack":  # an imported original-format pack; its unpacker loads only then
            from client.pdpack_pull import PackDownload

            legacy = PackDownload.parse(answer["pack"])
        elif answer.get("format") == "chunks":
            index = _fetch_index(blob_client, answer["index_url"], manifest)
        else:
            raise PdcatError(
                f"the catalog answered a pull in a format this pdcat does not know: {answer.get('format')!r}"
            )
        return _pull_resolved(
            _Resolved(answer, manifest, index, legacy),
            api,
            dest_dir,
            name,
            config,
            progress,
            blob_client,
            cache,
            on_plan,
            on_evict,
            started,
        )
    finally:
        if own_blobs:
            blob_client.close()


def _fetch_index(blobs: BlobClient, url: str, manifest: dict[str, Any]) -> PackIndex:
    """The version's index from storage, trusted only if it hashes to the manifest's pack digest."""
    data = blobs.get(url, "the pack index")
    if len(data) > MAX_INDEX_BYTES or hashlib.sha256(data).hexdigest() != manifest["pack"]["digest"]:
        raise ChunkCorrupt("the pack index does not match the manifest's pack digest; refusing to pull it")
    return PackIndex.from_bytes(data)


@dataclass(frozen=True)
class _Resolved:
    """A pull answer with its index fetched and checked (or the original-format pack it names)."""

    answer: dict[str, Any]
    manifest: dict[str, Any]
    index: PackIndex | None
    legacy: PackDownload | None


def _pull_resolved(
    resolved: _Resolved,
    api: CatalogClient,
    dest_dir: Path,
    name: str | None,
    config: TransferConfig,
    progress: Progress,
    blob_client: BlobClient,
    cache: VmCache | None,
    on_plan: Callable[[PullPlan], None] | None,
    on_evict: Callable[[CacheEntry], None] | None,
    started: float,
) -> PullResult:
    answer, manifest, index, legacy = resolved.answer, resolved.manifest, resolved.index, resolved.legacy
    bundle_name = name or manifest["catalog_id"]
    if "/" in bundle_name or bundle_name.startswith(".") or not bundle_name.strip():
        raise InvalidInput(f"invalid VM name {bundle_name!r}")
    final = dest_dir / f"{bundle_name}.{manifest['vm_type']}"
    if final.exists():
        raise Conflict(f"{final} already exists; pick another --name or remove it first")
    if legacy is not None:  # the content-addressed cache has nothing to key a single tar by: "off"
        return _pull_pdpack(api, manifest, legacy, final, config, progress, on_plan, started)
    assert index is not None
    job = _PullJob(api, answer, manifest, index, final, config, progress, blob_client, on_plan, started)
    if cache is None:
        return _pull_direct(job)
    with cache.lock(index.digest):
        return _pull_cached(job, cache, on_evict)


def _pull_pdpack(
    api: CatalogClient,
    manifest: dict[str, Any],
    pack: PackDownload,
    final: Path,
    config: TransferConfig,
    progress: Progress,
    on_plan: Callable[[PullPlan], None] | None,
    started: float,
) -> PullResult:
    """Plan (refusing a disk that is too small), then stream the one pack into ``final``, verified.

    The plan counts the bundle's size as written (its holes may cost less) and the pack as downloaded.
    """
    write_bytes = max(int(manifest.get("size") or 0), 0)
    plan = PullPlan(manifest, None, final, "off", pack.size, 1, 0, write_bytes, _free_bytes(final.parent) - write_bytes)
    _announce(plan, on_plan)
    from client.pdpack_pull import PackDownload, unpack_from_url

    key = (manifest["catalog_id"], manifest["version"], manifest["architecture"])
    final.parent.mkdir(parents=True, exist_ok=True)

    def refresh() -> PackDownload:
        return PackDownload.parse(api.pull_pack_url(*key))

    http = httpx.Client(timeout=300.0, follow_redirects=False)  # a presigned URL is its own authorisation
    progress.start("downloading", pack.size)
    try:
        with _pull_lock(final):
            if final.exists():
                raise Conflict(f"{final} already exists; pick another --name or remove it first")
            stats = unpack_from_url(
                http, pack, refresh, final, advance=progress.advance, retries=config.retries, backoff=config.backoff
            )
    except PdcatError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"{final.parent} ran out of space; the partial VM was removed") from exc
        raise
    finally:
        progress.finish()
        http.close()
    return PullResult(
        path=final,
        manifest=manifest,
        chunks=1,
        downloaded_chunks=1,
        downloaded_bytes=stats.pack_bytes,
        resumed_chunks=0,
        seconds=time.monotonic() - started,
        cache="off",
    )


def _stored_sizes(index: PackIndex) -> dict[str, int]:
    return {c.digest: c.stored_size or c.size for c in index.chunks()}


@dataclass(frozen=True)
class _PullJob:
    """One resolved pull: what both ways of pulling (through the cache or straight) share."""

    api: CatalogClient
    answer: dict[str, Any]
    manifest: dict[str, Any]
    index: PackIndex
    final: Path
    config: TransferConfig
    progress: Progress
    blobs: BlobClient
    on_plan: Callable[[PullPlan], None] | None
    started: float

    @property
    def places(self) -> dict[str, list[tuple[FileEntry, Chunk]]]:
        return _places(self.index)

    def resume_state(self, target: Path) -> set[str]:
        """Chunks a killed pull into ``target`` already wrote (its journal), so they are not fetched again."""
        partial, journal = partial_paths(target)
        return _read_journal(journal, self.index.digest) if partial.is_dir() else set()

    def plan(self, cache_state: str, todo: list[str], reused: int, write_bytes: int) -> PullPlan:
        """Say what the pull will cost, then refuse up front if the disk cannot hold it."""
        stored = _stored_sizes(self.index)
        free = _free_bytes(self.final.parent)
        plan = PullPlan(
            self.manifest,
            self.index,
            self.final,
            cache_state,
            sum(stored[d] for d in todo),
            len(todo),
            reused,
            write_bytes,
            free - write_bytes,
        )
        return _announce(plan, self.on_plan)

    def download(self, target: Path, local: Callable[[str], bytes | None] | None = None) -> DownloadStats:
        return download(
            self.api,
            self.manifest,
            self.index,
            {},
            target,
            config=self.config,
            progress=self.progress,
            blobs=self.blobs,
            local=local,
        )

    def result(self, stats: DownloadStats, cache_state: str, clone_method: str | None = None) -> PullResult:
        return PullResult(
            path=self.final,
            manifest=self.manifest,
            chunks=len(self.index.unique_digests()),
            downloaded_chunks=stats.downloaded_chunks,
            downloaded_bytes=stats.downloaded_bytes,
            resumed_chunks=stats.resumed_chunks,
            reused_chunks=stats.reused_chunks,
            reused_bytes=stats.reused_bytes,
            seconds=time.monotonic() - self.started,
            cache=cache_state,
            clone_method=clone_method,
        )


def _announce(plan: PullPlan, on_plan: Callable[[PullPlan], None] | None) -> PullPlan:
    """Show the plan, then refuse up front if the disk cannot hold what the pull will write."""
    if on_plan:
        on_plan(plan)
    if plan.free_after < 0:
        raise DiskFull(
            f"not enough space in {plan.final.parent}: the pull writes {plan.write_bytes} bytes, "
            f"{plan.write_bytes + plan.free_after} are free"
        )
    return plan


def _written(places: dict[str, list[tuple[FileEntry, Chunk]]], digests: Iterable[str]) -> int:
    """Bytes written for these chunks: each once per place it appears in the VM."""
    return sum(places[d][0][1].size * len(places[d]) for d in digests)


def _pull_direct(job: _PullJob) -> PullResult:
    places = job.places
    done = job.resume_state(job.final)
    todo = [d for d in places if d not in done]
    job.plan("off", todo, 0, _written(places, todo))
    return job.result(job.download(job.final), "off")


def _pull_cached(job: _PullJob, cache: VmCache, on_evict: Callable[[CacheEntry], None] | None) -> PullResult:
    index = job.index
    places = job.places
    data_bytes = sum(c.size for c in index.chunks())
    if cache.lookup(index.digest, index) is not None:
        job.plan("hit", [], data_bytes, 0 if _cow(cache, job.final) else data_bytes)
        method = _materialize(cache, index.digest, job.final)
        return job.result(DownloadStats(reused_bytes=data_bytes), "hit", method)

    # Make room first, so chunks chosen for reuse below cannot be evicted under us.
    for victim in cache.prune(incoming=data_bytes):
        if on_evict:
            on_evict(victim)
    staging = cache.staging_dir(index.digest)
    done = job.resume_state(staging)
    sources = cache.chunk_source(index, exclude=index.digest)
    todo = [d for d in places if d not in done and d not in sources]
    reused = sum(places[d][0][1].size for d in sources if d not in done)
    write = _written(places, (d for d in places if d not in done))
    job.plan("miss", todo, reused, write + (0 if _cow(cache, job.final) else data_bytes))

    def local(chunk_digest: str) -> bytes | None:
        where = sources.get(chunk_digest)
        return cache.read_chunk(where, chunk_digest) if where else None

    stats = job.download(staging, local)
    manifest = job.manifest
    cache.commit(
        index.digest,
        index,
        staging,
        catalog_id=manifest["catalog_id"],
        version=manifest["version"],
        architecture=manifest["architecture"],
    )
    return job.result(stats, "miss", _materialize(cache, index.digest, job.final))


def _materialize(cache: VmCache, digest: str, final: Path) -> str:
    try:
        return cache.materialize(digest, final)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"{final.parent} ran out of space while copying the VM out of the cache") from exc
        raise


def _cow(cache: VmCache, final: Path) -> bool:
    """Whether materialising from the cache into ``final``'s folder costs no space (reflink/APFS)."""
    target = final.parent
    target.mkdir(parents=True, exist_ok=True)
    same_fs = os.stat(target).st_dev == os.stat(cache.root).st_dev
    return same_fs and (sys.platform == "darwin" or supports_reflink(target))


def _discard(partial: Path, journal: Path) -> None:
    """Leave nothing half-written behind after a failure that resuming cannot fix."""
    shutil.rmtree(partial, ignore_errors=True)
    journal.unlink(missing_ok=True)

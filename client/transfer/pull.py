"""Pull: resolve the version, then hand it to the strategy its ``format`` names.

``chunks`` (this module): check the index against the manifest's pack digest, plan, then get the
chunks from this machine or from storage (:mod:`client.transfer.download`), writing each byte of the
bundle once. With the cache (:mod:`client.cache`), where the bundle goes decides how:

* the destination can clone the cache's files (reflink on the cache's filesystem, APFS): download
  into the cache's staging area, commit the bundle there, clone it out (a bundle entry);
* anywhere else (ext4, another filesystem): download straight into the destination and keep the
  verified compressed chunks in the cache as they arrive (a chunks entry).

A cached bundle is cloned (or, where cloning is impossible, copied) whatever the destination.
``pdpack``: an original-format pack the catalog imported, pulled by :mod:`client.transfer.pdpack`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import CatalogClient
from client.blobio import BlobClient
from client.cache import BUNDLE, CacheEntry, LocalChunks, VmCache, parse_index
from client.clone import supports_reflink
from client.packer import ChunkCorrupt
from client.transfer.common import (
    DiskFull,
    NoProgress,
    Progress,
    PullResult,
    TransferConfig,
    destination,
    partial_paths,
)
from client.transfer.download import DownloadStats, download, read_journal
from client.transfer.plan import PullPlan, announce, free_bytes, places, written
from core.errors import Gone, InvalidInput, NotFound, PdcatError
from core.pack import PackIndex
from core.wire import MAX_INDEX_BYTES

__all__ = ["DECOMPRESS", "pull"]

DECOMPRESS = "decompress"
"""``PullResult.clone_method`` of a pull served from the cache's chunk objects."""


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
    """Resolve, plan, then materialise from the cache or download (keeping what the cache needs)."""
    config = config or TransferConfig()
    progress = progress or NoProgress()
    started = time.monotonic()
    answer = api.pull(catalog_id, version, architecture)
    manifest: dict[str, Any] = answer["manifest"]
    if answer.get("format") == "pdpack":  # an imported original-format pack; its unpacker loads only then
        from client.transfer.pdpack import pull_pdpack

        return pull_pdpack(api, answer, dest_dir, name, config, progress, on_plan, started)
    if answer.get("format") != "chunks":
        raise PdcatError(f"the catalog answered a pull in a format this pdcat does not know: {answer.get('format')!r}")
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(
        connections=config.workers * 2, retries=config.retries, backoff=config.backoff, trust=api.trust
    )
    try:
        digest = str(manifest["pack"]["digest"])
        index = cache.cached_index(digest) if cache is not None else None  # nothing to download then
        if index is None:
            index = _fetch_index(blob_client, answer["index_url"], digest)
        final = destination(manifest, dest_dir, name)
        job = _PullJob(api, manifest, index, digest, final, config, progress, blob_client, on_plan, started)
        if cache is None:
            return _pull_direct(job)
        with cache.lock(digest):
            return _pull_cached(job, cache, on_evict)
    finally:
        if own_blobs:
            blob_client.close()


def _fetch_index(blobs: BlobClient, url: str, digest: str) -> PackIndex:
    """The version's index from storage, trusted only if it hashes to the manifest's pack digest."""
    data = blobs.get(url, "the pack index")
    if len(data) > MAX_INDEX_BYTES or hashlib.sha256(data).hexdigest() != digest:
        raise ChunkCorrupt("the pack index does not match the manifest's pack digest; refusing to pull it")
    return parse_index(data, digest)


@dataclass(frozen=True)
class _PullJob:
    """One resolved pull: what every way of pulling chunks shares."""

    api: CatalogClient
    manifest: dict[str, Any]
    index: PackIndex
    digest: str  # the manifest's pack digest, which the index hashes to
    final: Path
    config: TransferConfig
    progress: Progress
    blobs: BlobClient
    on_plan: Callable[[PullPlan], None] | None
    started: float

    def resume_state(self, target: Path) -> set[str]:
        """Chunks a killed pull into ``target`` already wrote (its journal), so they are not fetched again."""
        partial, journal = partial_paths(target)
        return read_journal(journal, self.digest) if partial.is_dir() else set()

    def plan(self, cache_state: str, remote: Iterable[str], reused: int, write_bytes: int) -> PullPlan:
        """Say what the pull will cost, then refuse up front if the disk cannot hold it."""
        stored = self.index.stored_sizes()
        remote = list(remote)
        free = free_bytes(self.final.parent)
        plan = PullPlan(
            self.manifest,
            self.index,
            self.final,
            cache_state,
            sum(stored[d] for d in remote),
            len(remote),
            reused,
            write_bytes,
            free - write_bytes,
        )
        return announce(plan, self.on_plan)

    def download(self, target: Path, local: LocalChunks | None = None) -> DownloadStats:
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
            pack_digest=self.digest,
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


@dataclass(frozen=True)
class _Figures:
    """What is left to do for a target, counted once (the per-chunk maps die here, before the
    download builds its own: a large VM's bookkeeping is never held twice)."""

    remote: list[str]  # chunks to download
    reused: int  # raw bytes of the chunks this machine holds
    written: int  # bytes written into the target (each place a chunk goes, data only)
    incoming: int  # bytes of the objects the cache does not hold yet (what keeping them adds)


def _figures(index: PackIndex, done: set[str], local: LocalChunks | None = None) -> _Figures:
    where = places(index)
    stored = index.stored_sizes()
    sizes = index.unique_digests()
    todo = [d for d in where if d not in done]
    here = {d for d in todo if local is not None and local.has(d)}
    return _Figures(
        remote=[d for d in todo if d not in here],
        reused=sum(sizes[d] for d in here),
        written=written(where, todo),
        incoming=sum(_disk_bytes(stored[d]) for d in todo if d not in here),
    )


def _pull_direct(job: _PullJob) -> PullResult:
    figures = _figures(job.index, job.resume_state(job.final))
    job.plan("off", figures.remote, 0, figures.written)
    del figures
    return job.result(job.download(job.final), "off")


def _pull_cached(job: _PullJob, cache: VmCache, on_evict: Callable[[CacheEntry], None] | None) -> PullResult:
    index, digest = job.index, job.digest
    cow = _cow(cache, job.final)
    entry = cache.lookup(digest, index)
    if entry is not None and entry.kind == BUNDLE:
        data_bytes = index.data_size
        job.plan("hit", [], data_bytes, 0 if cow else data_bytes)
        method = _materialize(cache, digest, job.final)
        return job.result(DownloadStats(reused_bytes=data_bytes), "hit", method)
    if cow:
        return _pull_into_bundle(job, cache, on_evict)
    return _pull_keeping_chunks(job, cache, on_evict)


def _pull_keeping_chunks(job: _PullJob, cache: VmCache, on_evict: Callable[[CacheEntry], None] | None) -> PullResult:
    """Write the bundle once, at its destination; keep the downloaded chunks, compressed, in the cache."""
    index, digest = job.index, job.digest
    cache.reserve(digest, index)  # from here on, no eviction removes a chunk object this pull uses
    done = job.resume_state(job.final)
    _prune(cache, _figures(index, done, cache.local_chunks(index, exclude=digest)).incoming, on_evict)
    local = cache.local_chunks(index, exclude=digest, keep=True)  # again: a cached bundle may be gone now
    figures = _figures(index, done, local)
    write = figures.written + (figures.incoming if _same_filesystem(cache.root, job.final.parent) else 0)
    job.plan("miss" if figures.remote else "hit", figures.remote, figures.reused, write)
    del figures, done
    try:
        stats = job.download(job.final, local)
    except (ChunkCorrupt, InvalidInput, NotFound, Gone):
        cache.release(digest)  # what resuming cannot fix keeps nothing, in the cache either
        raise
    manifest = job.manifest
    cache.commit_chunks(
        digest,
        index,
        catalog_id=manifest["catalog_id"],
        version=manifest["version"],
        architecture=manifest["architecture"],
    )
    state = "hit" if stats.downloaded_chunks == 0 else "miss"
    return job.result(stats, state, DECOMPRESS if state == "hit" else None)


def _pull_into_bundle(job: _PullJob, cache: VmCache, on_evict: Callable[[CacheEntry], None] | None) -> PullResult:
    """Destination and cache share blocks: download into the cache's staging area, commit the bundle
    there and clone it out. Its bytes are written once, and the next pull is a clone."""
    index, digest = job.index, job.digest
    staging = cache.staging_dir(digest)
    done = job.resume_state(staging)
    # Make room first, so chunks chosen for reuse below cannot be evicted under us.
    _prune(cache, _figures(index, done).written, on_evict)
    local = cache.local_chunks(index, exclude=digest)
    figures = _figures(index, done, local)
    job.plan("miss" if figures.remote else "hit", figures.remote, figures.reused, figures.written)
    del figures, done
    stats = job.download(staging, local)
    manifest = job.manifest
    cache.commit(
        digest,
        index,
        staging,
        catalog_id=manifest["catalog_id"],
        version=manifest["version"],
        architecture=manifest["architecture"],
    )
    state = "hit" if stats.downloaded_chunks == 0 else "miss"
    return job.result(stats, state, _materialize(cache, digest, job.final))


def _prune(cache: VmCache, incoming: int, on_evict: Callable[[CacheEntry], None] | None) -> None:
    for victim in cache.prune(incoming=incoming):
        if on_evict:
            on_evict(victim)


def _materialize(cache: VmCache, digest: str, final: Path) -> str:
    try:
        return cache.materialize(digest, final)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"{final.parent} ran out of space while copying the VM out of the cache") from exc
        raise


def _disk_bytes(size: int) -> int:
    return -(-size // 4096) * 4096


def _same_filesystem(a: Path, b: Path) -> bool:
    b.mkdir(parents=True, exist_ok=True)
    return os.stat(a).st_dev == os.stat(b).st_dev


def _cow(cache: VmCache, final: Path) -> bool:
    """Whether the destination can clone the cache's files (reflink, APFS): then the cache keeps the
    bundle itself and a pull costs one write; elsewhere it keeps compressed chunks."""
    target = final.parent
    target.mkdir(parents=True, exist_ok=True)
    return _same_filesystem(cache.root, target) and (sys.platform == "darwin" or supports_reflink(target))

"""Pull: resolve the version, then hand it to the strategy its ``format`` names.

``chunks`` (this module): check the index against the manifest's pack digest, plan, then materialise
from the local cache or download the chunks (into the cache when there is one). ``pdpack``: an
original-format pack the catalog imported, pulled by :mod:`client.transfer.pdpack`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import CatalogClient
from client.blobio import BlobClient
from client.cache import CacheEntry, VmCache
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
from client.transfer.download import DownloadStats, LocalChunks, download, read_journal
from client.transfer.plan import Places, PullPlan, announce, free_bytes, places, written
from core.errors import PdcatError
from core.pack import PackIndex
from core.wire import MAX_INDEX_BYTES

__all__ = ["pull"]


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
    if answer.get("format") == "pdpack":  # an imported original-format pack; its unpacker loads only then
        from client.transfer.pdpack import pull_pdpack

        return pull_pdpack(api, answer, dest_dir, name, config, progress, on_plan, started)
    if answer.get("format") != "chunks":
        raise PdcatError(f"the catalog answered a pull in a format this pdcat does not know: {answer.get('format')!r}")
    own_blobs = blobs is None
    blob_client = blobs or BlobClient(connections=config.workers * 2, retries=config.retries, backoff=config.backoff)
    try:
        index = _fetch_index(blob_client, answer["index_url"], manifest)
        final = destination(manifest, dest_dir, name)
        job = _PullJob(api, manifest, index, final, config, progress, blob_client, on_plan, started)
        if cache is None:
            return _pull_direct(job)
        with cache.lock(index.digest):
            return _pull_cached(job, cache, on_evict)
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
class _PullJob:
    """One resolved pull: what both ways of pulling chunks (through the cache or straight) share."""

    api: CatalogClient
    manifest: dict[str, Any]
    index: PackIndex
    final: Path
    config: TransferConfig
    progress: Progress
    blobs: BlobClient
    on_plan: Callable[[PullPlan], None] | None
    started: float

    @property
    def places(self) -> Places:
        return places(self.index)

    def resume_state(self, target: Path) -> set[str]:
        """Chunks a killed pull into ``target`` already wrote (its journal), so they are not fetched again."""
        partial, journal = partial_paths(target)
        return read_journal(journal, self.index.digest) if partial.is_dir() else set()

    def plan(self, cache_state: str, todo: list[str], reused: int, write_bytes: int) -> PullPlan:
        """Say what the pull will cost, then refuse up front if the disk cannot hold it."""
        stored = {c.digest: c.stored_size or c.size for c in self.index.chunks()}
        free = free_bytes(self.final.parent)
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


def _pull_direct(job: _PullJob) -> PullResult:
    where = job.places
    done = job.resume_state(job.final)
    todo = [d for d in where if d not in done]
    job.plan("off", todo, 0, written(where, todo))
    return job.result(job.download(job.final), "off")


def _pull_cached(job: _PullJob, cache: VmCache, on_evict: Callable[[CacheEntry], None] | None) -> PullResult:
    index = job.index
    where = job.places
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
    todo = [d for d in where if d not in done and d not in sources]
    reused = sum(where[d][0][1].size for d in sources if d not in done)
    write = written(where, (d for d in where if d not in done))
    job.plan("miss", todo, reused, write + (0 if _cow(cache, job.final) else data_bytes))

    def local(chunk_digest: str) -> bytes | None:
        found = sources.get(chunk_digest)
        return cache.read_chunk(found, chunk_digest) if found else None

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

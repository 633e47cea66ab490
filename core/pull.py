"""Pull, storage protocol v2 (docs/adr-002-storage-protocol-v2.md): where the index is, GET URLs a
page of chunks at a time, and a puller's report of a corrupt chunk (re-verified by the server).

Order of checks, as everywhere: the PULL claim (403), visibility (404), state (409 uploading or
tainted, 410 revoked). An imported original-format pack is one object: one ``pack`` URL, no chunks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from core.chunk_check import recheck_stored
from core.errors import InvalidInput
from core.fanout import parallel
from core.identity import ManifestKey
from core.manifest import Manifest, now_iso
from core.pack import MAX_CHUNK_SIZE, Naming, PackIndex
from core.pdpack_meta import checksum_algorithm
from core.rbac import Claim, Principal, require
from core.service_common import ServiceContext, digest_list, expires_at
from core.storage_layout import index_key, stored_key
from core.wire import CHUNK_PAGE, MAX_INDEX_BYTES, REPORT_PAGE, PackAnswer, PullAnswer, ReportAnswer

__all__ = ["IndexCache", "pull", "pull_urls", "report_corrupt"]

log = logging.getLogger("pdcat.service")


@dataclass(frozen=True)
class _Known:
    """What a version's index says about its objects: their names, and how names are computed."""

    digests: frozenset[str]
    naming: Naming


class IndexCache:
    """The object digests of a few recently pulled versions, keyed by manifest and pack digest
    (content-addressed, so a cached answer can never be stale). Shared by a service's threads."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: dict[tuple[str, str], _Known] = {}
        self._lock = threading.Lock()

    def known(self, ctx: ServiceContext, manifest: Manifest) -> _Known:
        cache_key = (str(manifest.key), manifest.pack.digest or "")
        with self._lock:
            cached = self._entries.get(cache_key)
        if cached is None:
            data = ctx.blobs.get_bytes(index_key(manifest.key.prefix), max_bytes=MAX_INDEX_BYTES)
            index = PackIndex.from_bytes(data)
            cached = _Known(frozenset(index.unique_digests()), index.naming)
            del index
            with self._lock:
                self._entries[cache_key] = cached
                while len(self._entries) > self._size:
                    self._entries.pop(next(iter(self._entries)))
        return cached


def pull(ctx: ServiceContext, who: Principal, catalog_id: str, version: str, architecture: str) -> PullAnswer:
    """Resolve, check state, count the download, and hand out where the index is."""
    require(who, Claim.PULL)
    manifest = ctx.resolve(who, catalog_id, version, architecture)
    manifest.ensure_pullable()
    at = now_iso()
    ctx.store.record_download(manifest.key, who.subject, at)
    manifest = replace(
        manifest,
        download_count=manifest.download_count + 1,
        last_downloaded_at=at,
        last_downloaded_by=who.subject,
    )
    log.info("pull", extra={"manifest": str(manifest.key), "by": who.subject, "size": manifest.size})
    expiry = ctx.settings.url_expiry_seconds
    if manifest.pack.is_pdpack:
        return {
            "format": "pdpack",
            "manifest": manifest.to_public(),
            "pack": _pdpack_download(ctx, manifest),
            "expires_at": expires_at(expiry),
        }
    return {
        "format": "chunks",
        "manifest": manifest.to_public(),
        "index_url": ctx.blobs.presign(index_key(manifest.key.prefix), "GET", expiry),
        "expires_at": expires_at(expiry),
    }


def pull_urls(
    ctx: ServiceContext, cache: IndexCache, who: Principal, key: ManifestKey, digests: object
) -> dict[str, Any]:
    """More (or fresh) GET URLs for a pull in progress. Does not count as another download.

    An original-format pack is one object: its answer is a fresh ``pack`` URL, and asking for
    chunk digests is an error (it has none).
    """
    require(who, Claim.PULL)
    manifest, _ = ctx.load(who, key)
    manifest.ensure_pullable()
    if manifest.pack.is_pdpack:
        if digests is not None:
            raise InvalidInput(f"{key} is a single original-format pack: ask without digests for a fresh pack URL")
        return {
            "pack": _pdpack_download(ctx, manifest),
            "expires_at": expires_at(ctx.settings.url_expiry_seconds),
        }
    wanted = digest_list(digests, CHUNK_PAGE)
    known = cache.known(ctx, manifest)
    if any(d not in known.digests for d in wanted):
        raise InvalidInput("some digests are not part of this version")
    expiry = ctx.settings.url_expiry_seconds
    keys = {d: stored_key(manifest.catalog_id, d, known.naming.block_size) for d in wanted}
    return {
        "urls": {d: ctx.blobs.presign(key, "GET", expiry) for d, key in keys.items()},
        "expires_at": expires_at(expiry),
    }


def report_corrupt(
    ctx: ServiceContext, cache: IndexCache, who: Principal, key: ManifestKey, digests: object
) -> ReportAnswer:
    """A puller found these chunks corrupt. Re-verify each; quarantine only what really is."""
    require(who, Claim.PULL)
    manifest, _ = ctx.load(who, key)
    manifest.ensure_pullable()  # as a pull: 409 still uploading or tainted, 410 revoked
    if manifest.pack.is_pdpack:
        raise InvalidInput(f"{key} is a single original-format pack: it has no chunks to report")
    wanted = digest_list(digests, REPORT_PAGE)
    known = cache.known(ctx, manifest)
    if any(d not in known.digests for d in wanted):
        raise InvalidInput("some digests are not part of this version")
    limit = manifest.pack.chunk_size or MAX_CHUNK_SIZE
    results = parallel(
        lambda d: recheck_stored(ctx.blobs, manifest.catalog_id, d, limit, known.naming), wanted, workers=4
    )
    answer: ReportAnswer = {"quarantined": [], "intact": []}
    for digest, quarantined in zip(wanted, results, strict=True):
        answer["quarantined" if quarantined else "intact"].append(digest)
    if answer["quarantined"]:
        count = len(answer["quarantined"])
        log.warning("chunks quarantined", extra={"manifest": str(key), "by": who.subject, "count": count})
    return answer


def _pdpack_download(ctx: ServiceContext, manifest: Manifest) -> PackAnswer:
    """What a client needs to fetch and check an original-format pack: one short-lived GET URL."""
    pack = manifest.pack
    return {
        "format": "pdpack",
        "url": ctx.blobs.presign(pack.key, "GET", ctx.settings.url_expiry_seconds),
        "size": pack.pack_size,
        "checksum": pack.compressed_checksum,
        "checksum_algorithm": checksum_algorithm(pack.compressed_checksum),
        "compressed": pack.is_compressed,
    }

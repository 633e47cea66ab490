"""The pull strategy for a version the catalog imported in the original product's format (``format:
"pdpack"``): one URL streamed into the safe unpacker by :mod:`client.pdpack_pull`.

It bypasses the content-addressed cache (state ``"off"``): the cache is keyed by pdcat pack digests,
and a single tar has none to key it by.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client.api import CatalogClient
from client.net import tls_context
from client.pdpack_pull import PackDownload, unpack_from_url
from client.transfer.common import DiskFull, Progress, PullResult, TransferConfig, destination, pull_lock
from client.transfer.plan import PullPlan, announce, free_bytes
from core.errors import Conflict, PdcatError

__all__ = ["pull_pdpack"]


def pull_pdpack(
    api: CatalogClient,
    answer: dict[str, Any],
    dest_dir: Path,
    name: str | None,
    config: TransferConfig,
    progress: Progress,
    on_plan: Callable[[PullPlan], None] | None,
    started: float,
) -> PullResult:
    """Plan (refusing a disk that is too small), then stream the one pack into place, verified.

    The plan counts the bundle's size as written (its holes may cost less) and the pack as downloaded.
    """
    manifest: dict[str, Any] = answer["manifest"]
    pack = PackDownload.parse(answer["pack"])
    final = destination(manifest, dest_dir, name)
    write_bytes = max(int(manifest.get("size") or 0), 0)
    plan = PullPlan(manifest, None, final, "off", pack.size, 1, 0, write_bytes, free_bytes(final.parent) - write_bytes)
    announce(plan, on_plan)

    key = (manifest["catalog_id"], manifest["version"], manifest["architecture"])
    final.parent.mkdir(parents=True, exist_ok=True)

    def refresh() -> PackDownload:
        return PackDownload.parse(api.pull_pack_url(*key))

    # a presigned URL is its own authorisation; its server is trusted as the catalog is
    http = httpx.Client(timeout=300.0, follow_redirects=False, verify=tls_context(api.trust))
    progress.start("downloading", pack.size)
    try:
        with pull_lock(final):
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

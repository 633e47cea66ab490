"""The chunked download: GET, verify, decompress and write each chunk at its offsets into sparse files
in a hidden ``.partial`` folder, then rename it into place.

A journal of finished chunks lives next to the partial folder, so a killed pull resumes. What resuming
cannot fix (bad data in storage, a bad index, a version deleted or revoked under the pull) removes
everything it wrote; network errors and 5xx keep it for the next run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import CatalogClient
from client.blobio import BlobClient, UrlBook
from client.packer import ChunkCorrupt, decompress, finalize_tree, prepare_tree, write_chunk
from client.pool import run_bounded
from client.transfer.common import DiskFull, Progress, TransferConfig, partial_paths, pull_lock
from client.transfer.plan import places
from core.errors import Conflict, Gone, InvalidInput, NotFound, PdcatError
from core.pack import PackIndex
from core.wire import CHUNK_PAGE

__all__ = ["DownloadStats", "LocalChunks", "download", "read_journal"]

log = logging.getLogger("pdcat.transfer")

LocalChunks = Callable[[str], "bytes | None"]
"""Raw, verified bytes of a chunk found on this machine (another cached version), or None."""


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
) -> DownloadStats:
    """Fill ``final`` with the pack: verified chunks written at their offsets into sparse files.

    Work happens in a hidden partial folder with a journal of finished chunks, so a killed pull
    resumes; the folder is renamed to ``final`` only when every chunk is in and verified.
    """
    partial, journal = partial_paths(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with pull_lock(final):
        if final.exists():
            raise Conflict(f"{final} already exists; pick another --name or remove it first")
        done = read_journal(journal, index.digest) if partial.is_dir() else set()
        where = places(index)
        todo = [d for d in where if d not in done]
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
            size = where[chunk_digest][0][1].size
            raw = local(chunk_digest) if local is not None else None
            fetched = 0
            if raw is None:
                try:
                    raw, fetched = _fetch_verified(blobs, urls, chunk_digest, size)
                except ChunkCorrupt as exc:
                    raise _reported(api, key, chunk_digest, exc) from exc
            for entry, chunk in where[chunk_digest]:
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

        progress.start("downloading", sum(where[d][0][1].size for d in todo))
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


def _fetch_verified(blobs: BlobClient, urls: UrlBook, chunk_digest: str, size: int) -> tuple[bytes, int]:
    """GET, decompress and verify one chunk; a corrupt one is fetched once more before giving up."""
    what = f"chunk {chunk_digest[:12]}"
    for attempt in range(2):
        url = urls.get(chunk_digest) if attempt == 0 else urls.refresh(chunk_digest)
        blob = blobs.get(url, what, refresh=lambda: urls.refresh(chunk_digest))
        try:
            return decompress(blob, chunk_digest, size), len(blob)
        except ChunkCorrupt:
            if attempt == 1:
                raise
            log.warning("chunk %s failed verification; fetching it again", chunk_digest[:12])
    raise AssertionError("unreachable")


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

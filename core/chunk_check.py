"""Server-side verification of chunks: the one place that decides whether bytes may enter ``chunks/``.

A staged chunk is read with a bound, decompressed with a bound, hashed, and only then promoted to
its content address with a create-only write, so no client can place or replace a verified chunk
(docs/adr-002-storage-protocol-v2.md). The same check re-examines a chunk a puller reports corrupt.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Literal

from core.buffers import BufferPool, fill
from core.errors import NotFound, PayloadTooLarge
from core.marks import Confirmed
from core.pack import SHA256_CELLS, Naming
from core.ports import BlobStore
from core.storage_layout import quarantine_key, staging_chunk_key, stored_key

__all__ = [
    "CHECKS_AT_ONCE",
    "ONE_SHOT_LIMIT",
    "Verdict",
    "compressed_bound",
    "promote_staged",
    "raw_size_if_valid",
    "recheck_stored",
]

log = logging.getLogger("pdcat.verify")


ONE_SHOT_LIMIT = 8 * 1024 * 1024
CHECKS_AT_ONCE = max(1, (os.cpu_count() or 2) // 2)
_CHECKS = threading.BoundedSemaphore(CHECKS_AT_ONCE)
"""Chunks checked at once in this process, however many requests ask: a check is CPU work (more at
once only queue for the cores) and holds a compressed and a raw chunk in memory, so this bounds a
server's memory as well (the embedded server verifies while it receives other uploads)."""


def compressed_bound(raw_limit: int) -> int:
    """The largest zstd frame a chunk of ``raw_limit`` bytes can need (ZSTD_COMPRESSBOUND, rounded up)."""
    return raw_limit + (raw_limit >> 7) + 1024


def raw_size_if_valid(
    blob: bytes | memoryview, digest: str, raw_limit: int, naming: Naming = SHA256_CELLS
) -> int | None:
    """The raw size if ``blob`` is zstd of 1 to ``raw_limit`` bytes named ``digest``; else None.

    The name is ``naming``'s: the sha256 of the raw bytes (index format 1), or the root of its
    blocks' digests (formats 2 and 3, ``core.pack.Naming``). Several frames make one chunk, but the first
    must declare no size or the chunk's whole raw size, as a puller requires
    (``client.transfer.download``): a chunk it refuses, stored under its name, would fail every pull
    of every version that shares it.

    A chunk of at most ``ONE_SHOT_LIMIT`` raw bytes (the default grid's) is decompressed into a
    buffer kept for the next check: a fresh 4 MiB output per chunk cost the embedded server a page
    fault per 4 KiB (about a tenth of its CPU during a push, ``perf``), and reading into a reused
    buffer is as fast as one-shot decompression. A larger one is streamed: its raw bytes are hashed
    as they come out and never held whole, so a request verifying several chunks holds only their
    compressed forms.
    """
    import zstandard  # loaded on first verification: frontends' cold start stays free of it

    try:
        declared = zstandard.frame_content_size(blob)  # -1: the frame does not say
    except zstandard.ZstdError:
        return None  # not a zstd frame (a skippable one included)
    if raw_limit <= ONE_SHOT_LIMIT:
        with _RAW.take(raw_limit + 1) as buffer:
            try:
                size = _decompress_into(zstandard.ZstdDecompressor(), blob, buffer)
            except zstandard.ZstdError:
                return None
            ok = 0 < size <= raw_limit and declared in (-1, size)
            return size if ok and naming.digest(buffer[:size]) == digest else None
    hasher = naming.hasher()
    total = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        while total <= raw_limit:
            part = reader.read(min(1 << 20, raw_limit + 1 - total))
            if not part:
                break
            hasher.update(part)
            total += len(part)
    except zstandard.ZstdError:
        return None
    if total > raw_limit or total == 0 or declared not in (-1, total) or hasher.hexdigest() != digest:
        return None
    return total


def _decompress_into(dctx: Any, blob: bytes | memoryview, out: memoryview) -> int:
    """Decompress every frame of ``blob`` into ``out``, stopping once it is full: the bytes written
    (``len(out)`` means the data did not fit, which the caller's one-byte-larger ``out`` detects)."""
    return fill(dctx.stream_reader(blob, read_across_frames=True), out)


_RAW = BufferPool(CHECKS_AT_ONCE, ONE_SHOT_LIMIT + 1)
"""Raw chunks' buffers: at most as many stay kept as ``_CHECKS`` lets checks run at once."""


@dataclass(frozen=True)
class Verdict:
    digest: str
    outcome: Literal["verified", "missing", "corrupt"]
    confirmed: Confirmed | None = None


def promote_staged(
    blobs: BlobStore,
    catalog_id: str,
    nonce: str,
    digest: str,
    raw_limit: int,
    naming: Naming = SHA256_CELLS,
    *,
    may_find: bool = True,
) -> Verdict:
    """Verify the session's staged copy of ``digest`` and move it to ``chunks/`` without replacing.

    Already verified (someone promoted it first): the existing object stands and the staged copy is
    dropped. The staged object is removed in every outcome but "missing". Nothing staged: "verified"
    if the object is stored, but only with ``may_find`` (a session that may deduplicate); for any other
    session that answer would tell what the catalog holds, so it is "missing", as when nothing is.
    """
    final = stored_key(catalog_id, digest, naming.block_size)
    staged = staging_chunk_key(nonce, digest)
    try:
        with _CHECKS, blobs.taken(staged, compressed_bound(raw_limit)) as taken:
            raw_size = raw_size_if_valid(taken.data, digest, raw_limit, naming)
            if raw_size is None:
                log.warning("staged chunk failed verification", extra={"digest": digest[:12], "catalog": catalog_id})
                return Verdict(digest, "corrupt")
            stored_size = len(taken.data)
            if not taken.put_if_absent(final):  # verified by another push first: that object stands
                existing = blobs.head(final)
                stored_size = existing.size if existing else stored_size
            return Verdict(digest, "verified", Confirmed(stored_size, raw_size))
    except NotFound:
        if not may_find:
            return Verdict(digest, "missing")
        existing = blobs.head(final)
        if existing is not None:  # verified by an earlier request of this session, or by another push
            return Verdict(digest, "verified", Confirmed(existing.size))
        return Verdict(digest, "missing")
    except PayloadTooLarge:
        blobs.delete([staged])
        return Verdict(digest, "corrupt")


def recheck_stored(
    blobs: BlobStore, catalog_id: str, digest: str, raw_limit: int, naming: Naming = SHA256_CELLS
) -> bool:
    """Re-verify a stored chunk a client reported; quarantine it if it is really corrupt.

    Returns True if it was quarantined, or is not in ``chunks/`` at all (quarantined before, or never
    there): either way the next push uploads it again. The client's word alone never removes anything.
    """
    final = stored_key(catalog_id, digest, naming.block_size)
    with _CHECKS:
        try:
            blob = blobs.get_bytes(final, max_bytes=compressed_bound(raw_limit))
        except NotFound:
            return True
        except PayloadTooLarge:
            blob = b""
        if blob and raw_size_if_valid(blob, digest, raw_limit, naming) is not None:
            return False
    blobs.put_bytes(quarantine_key(catalog_id, digest), blob)
    blobs.delete([final])
    log.warning("stored chunk failed verification; quarantined", extra={"digest": digest[:12], "catalog": catalog_id})
    return True

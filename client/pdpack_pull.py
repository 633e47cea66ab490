"""Pulling an imported original-format pack: one presigned GET streamed straight into the safe unpacker.

A catalog that imported a pack the original product pushed (``POST /catalog/import``, ``format:
"pdpack"``) answers a pull with one ``pack`` URL instead of an index and chunk URLs. The tar/tar.gz is
read once, with no temporary copy: :func:`client.pdpack.unpack_pack` hashes it (the ``.meta``'s MD5)
and unpacks it into a hidden partial folder next to the destination, renamed into place only when
every member and the checksum passed; on any failure (corrupt, truncated, replaced, Ctrl-C) nothing
is left behind.

Requests follow :mod:`client.retry`: network errors, 5xx and 429 are retried with exponential
backoff and the last cause is kept; a 401/403 means the URL expired, so a fresh one is asked for
(``pull/urls``, which does not count another download). A connection dropped mid-stream
reopens at its offset with ``Range`` (a store that ignores it is read forward to that offset), and a
pack whose ETag, size or range changes on the way is refused: it was replaced while being read.

These packs bypass the content-addressed cache (cache state ``"off"``): the cache is keyed by pdcat
pack digests and shares chunks between versions, and a single tar has neither. A pull killed hard
(SIGKILL, power loss) cannot resume a tar stream; its hidden partial folder is removed by the next
pull into the same place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import httpx

from client.byo.common import READ_BLOCK, ResumingReader, open_buffered
from client.clone import remove_tree
from client.pdpack import UnpackStats, unpack_pack
from client.retry import RetryPolicy, check_storage
from core.errors import Conflict, InvalidInput, PdcatError
from core.manifest import PACK_FORMAT_PDPACK
from core.pdpack_meta import checksum_algorithm

__all__ = ["PackDownload", "open_pack_stream", "unpack_from_url"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class PackDownload:
    """The ``pack`` object of a pull answer for an original-format pack."""

    url: str
    size: int
    checksum: str
    compressed: bool

    @classmethod
    def parse(cls, data: object) -> PackDownload:
        """Check what the catalog sent before a byte is fetched: an unverifiable pack is refused."""
        if not isinstance(data, dict) or data.get("format") != PACK_FORMAT_PDPACK:
            raise InvalidInput("the catalog answered a pack format this pdcat does not know; update pdcat")
        url, size, checksum = data.get("url"), data.get("size"), data.get("checksum")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput("the catalog's pull answer has no usable pack URL")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput("the catalog's pull answer has no usable pack size")
        if not isinstance(checksum, str) or checksum_algorithm(checksum) is None:
            raise InvalidInput("the catalog gave no usable checksum for this pack; refusing to unpack it unverified")
        return cls(url, size, checksum.strip().lower(), bool(data.get("compressed", False)))

    def __repr__(self) -> str:  # the URL is a bearer credential for this object: never shown
        return f"PackDownload(size={self.size}, checksum={self.checksum!r}, compressed={self.compressed})"


class _HttpBody:
    """``read(n)`` over a streamed httpx response (raw bytes: the checksum covers what is stored)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks: Iterator[bytes] = response.iter_raw()  # as they arrive: a dropped line loses none
        self._buffer = b""

    def read(self, size: int = -1, /) -> bytes:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._buffer = chunk
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def close(self) -> None:
        self._response.close()


class _Opener:
    """Opens the pack at an offset, refreshing an expired URL and refusing a pack that changed."""

    def __init__(
        self, http: httpx.Client, pack: PackDownload, refresh: Callable[[], PackDownload], policy: RetryPolicy
    ) -> None:
        self._http = http
        self._url = pack.url
        self._size = pack.size
        self._refresh = refresh
        self._policy = policy
        self._etag: str | None = None

    def __call__(self, offset: int) -> _HttpBody:
        headers = {"Range": f"bytes={offset}-"} if offset else {}

        def attempt() -> _HttpBody:
            response = self._http.send(self._http.build_request("GET", self._url, headers=headers), stream=True)
            if response.status_code in (200, 206):
                return self._accept(response, offset)
            response.close()
            if response.status_code == 416:
                raise Conflict("the pack in storage changed while it was being read; pull again")
            check_storage(
                response, "the pack", missing="the pack is no longer in the catalog's storage (deleted or purged)"
            )
            raise PdcatError(f"storage answered HTTP {response.status_code} for the pack")

        return self._policy.run(attempt, "the pack", refresh=self._renew)

    def _renew(self) -> None:
        fresh = self._refresh()
        if fresh.size != self._size:
            raise Conflict("the pack was replaced in the catalog while it was being pulled; pull again")
        self._url = fresh.url

    def _accept(self, response: httpx.Response, offset: int) -> _HttpBody:
        try:
            self._check(response, offset)
        except BaseException:
            response.close()
            raise
        body = _HttpBody(response)
        if offset and response.status_code == 200:  # the store ignored the range: read forward to it
            skip = offset
            while skip:
                got = len(body.read(min(skip, READ_BLOCK)))
                if not got:
                    body.close()
                    raise Conflict("the pack in storage got shorter while it was being read; pull again")
                skip -= got
        return body

    def _check(self, response: httpx.Response, offset: int) -> None:
        etag = response.headers.get("etag")
        if self._etag is None:
            self._etag = etag
        elif etag and etag != self._etag:
            raise Conflict("the pack in storage was replaced while it was being read; pull again")
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
            if match is None or int(match.group(1)) != offset:
                raise Conflict("storage answered another range of the pack than the one asked for")
            total = match.group(3)
            stored = None if total == "*" else int(total)
        else:
            length = response.headers.get("content-length")
            stored = int(length) if length and length.isdigit() else None
        if stored is not None and stored != self._size:
            raise Conflict(
                f"the pack in storage is {stored} bytes, but the catalog recorded {self._size}: "
                "it was replaced after it was imported; import it again"
            )


class _Progressing:
    """Reports every byte read to the caller's progress subscriber."""

    def __init__(self, stream: BinaryIO, advance: Callable[[int], None]) -> None:
        self._stream = stream
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._advance(len(data))
        return data


def open_pack_stream(
    http: httpx.Client,
    pack: PackDownload,
    refresh: Callable[[], PackDownload],
    *,
    retries: int = 5,
    backoff: float = 0.5,
) -> BinaryIO:
    """The pack as one forward-only stream that survives dropped connections and expired URLs."""
    raw = ResumingReader(
        _Opener(http, pack, refresh, RetryPolicy(retries, backoff)),
        what="the pack",
        size=lambda: pack.size,
        transient=(httpx.TransportError,),
        retries=retries,
        backoff=backoff,
    )
    return open_buffered(raw)


def _remove_stale_partials(final: Path) -> None:
    """Hidden folders an earlier unpack into ``final`` left when it was killed hard (the caller holds
    the pull lock for ``final``, so none of them is in use). Only ``unpack_pack``'s own names match."""
    pattern = re.compile(re.escape(f".{final.name}.pdcat-partial-") + r"[0-9a-f]{8}(-b)?")
    for entry in final.parent.iterdir():
        if pattern.fullmatch(entry.name):
            remove_tree(entry)


def unpack_from_url(
    http: httpx.Client,
    pack: PackDownload,
    refresh: Callable[[], PackDownload],
    final: Path,
    *,
    advance: Callable[[int], None],
    retries: int = 5,
    backoff: float = 0.5,
) -> UnpackStats:
    """Stream the pack into ``final`` (which must not exist), verified; nothing is left on failure.

    The caller holds the pull lock for ``final``. A full disk surfaces as the ``PdcatError`` of
    ``unpack_pack`` with the ``OSError`` (ENOSPC) as its cause.
    """
    if final.parent.is_dir():
        _remove_stale_partials(final)
    stream = open_pack_stream(http, pack, refresh, retries=retries, backoff=backoff)
    try:
        stats = unpack_pack(
            cast(BinaryIO, _Progressing(stream, advance)), final, compressed=None, checksum=pack.checksum
        )
    finally:
        stream.close()
    if not stats.checksum_verified:  # PackDownload.parse only lets verifiable checksums through
        remove_tree(final)
        raise PdcatError("the pack was unpacked without its checksum being checked; it was removed")
    return stats

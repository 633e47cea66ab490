"""Moving chunk bytes to and from presigned URLs, as :mod:`client.retry` says.

The client used here never carries catalog credentials: a presigned URL is its own authorisation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from client.retry import BlobMissing, RetriesExceeded, RetryPolicy, UrlRefused, check_storage

__all__ = ["BlobClient", "BlobMissing", "RetriesExceeded", "UrlBook", "UrlRefused"]


class _ReleasedBody(httpx.SyncByteStream):
    """A PUT body that lets go of its bytes once the request is over. httpx keeps a finished
    response in a reference cycle (the response and its stream) that holds the request, and so the
    body, until the cyclic garbage collector runs: without this a push holds every chunk it sent
    since the last collection, not just the ones in flight."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self._data

    def release(self) -> None:
        self._data = b""


class BlobClient:
    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        connections: int = 16,
        timeout: float = 300.0,
        retries: int = 5,
        backoff: float = 0.5,
    ) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._http = httpx.Client(transport=transport, limits=limits, timeout=timeout, follow_redirects=False)
        self.policy = RetryPolicy(retries, backoff)

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, url: str, what: str, refresh: Callable[[], str] | None, **options: Any) -> bytes:
        """``refresh``: a fresh URL for the same object, asked for when storage refuses this one."""

        urls = [url]

        def attempt() -> bytes:
            response = self._http.request(method, urls[-1], **options)
            check_storage(response, what)
            return response.content

        return self.policy.run(attempt, what, refresh=None if refresh is None else lambda: urls.append(refresh()))

    def put(
        self,
        url: str,
        data: bytes,
        what: str,
        headers: Mapping[str, str] | None = None,
        *,
        refresh: Callable[[], str] | None = None,
    ) -> None:
        """``headers``: what the catalog said every PUT must carry (``put_headers``), e.g. Azure's blob type."""
        urls = [url]
        sized = {**(headers or {}), "Content-Length": str(len(data))}

        def attempt() -> None:
            body = _ReleasedBody(data)
            try:
                request = self._http.build_request("PUT", urls[-1], headers=sized)
                request.stream = body
                response = self._http.send(request)
                response.read()
                check_storage(response, what)
            finally:
                body.release()

        self.policy.run(attempt, what, refresh=None if refresh is None else lambda: urls.append(refresh()))

    def get(self, url: str, what: str, *, refresh: Callable[[], str] | None = None) -> bytes:
        return self._send("GET", url, what, refresh)


class UrlBook:
    """Presigned URLs by digest, fetched from the catalog a page at a time and refreshed on demand.

    Thread-safe: workers ask for the URL of the chunk they are about to move; a miss fetches the next
    page of digests that have no URL yet, in transfer order, so expiry stays short for large packs.
    """

    def __init__(
        self,
        first: dict[str, str],
        order: Sequence[str],
        fetch: Callable[[list[str]], dict[str, str]],
        page_size: int = 500,
    ) -> None:
        self._urls = dict(first)
        self._order = list(order)
        self._position = {d: i for i, d in enumerate(self._order)}
        self._fetch = fetch
        self._page = max(1, page_size)
        self._lock = threading.Lock()

    def get(self, digest: str) -> str:
        with self._lock:
            url = self._urls.get(digest)
            if url is None:
                start = self._position.get(digest, 0)
                later = [d for d in self._order[start + 1 :] if d not in self._urls]
                wanted = [digest, *later[: self._page - 1]]
                self._urls.update(self._fetch(wanted))
                url = self._urls[digest]
            return url

    def refresh(self, digest: str) -> str:
        """Drop the URL (it was refused) and everything fetched with it, then fetch fresh ones."""
        with self._lock:
            self._urls.clear()
        return self.get(digest)

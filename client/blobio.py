"""Moving chunk bytes to and from presigned URLs, with retries, backoff and URL refresh.

The client used here never carries catalog credentials: a presigned URL is its own authorisation.
A 401/403 from storage means the URL expired (or was refused): the caller asks the catalog for a fresh
one. Network errors and 5xx are retried with exponential backoff; the last cause is kept.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from core.errors import NotFound, PdcatError, Unavailable

__all__ = ["BlobClient", "BlobMissing", "RetriesExceeded", "UrlBook", "UrlRefused"]

log = logging.getLogger("pdcat.transfer")


class RetriesExceeded(Unavailable):
    """A chunk transfer kept failing; ``__cause__`` holds the last error."""


class UrlRefused(PdcatError):
    """Storage refused the URL (expired or not valid any more): get a fresh one and try again."""


class BlobMissing(NotFound):
    """Storage has no object at a (validly signed) URL: it was deleted, e.g. by ``rm --purge`` or gc.
    Not retried: waiting does not bring it back."""


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
        self.retries = retries
        self.backoff = backoff

    def close(self) -> None:
        self._http.close()

    def _attempt(self, what: str, send: Callable[[], httpx.Response]) -> httpx.Response:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                time.sleep(min(delay, 30.0))
            try:
                response = send()
            except httpx.TransportError as exc:
                last = exc
                log.warning("transfer error, will retry", extra={"what": what, "attempt": attempt + 1})
                continue
            if 300 <= response.status_code < 400:
                # A redirect from storage (S3's 307 for a bucket outside us-east-1 on the global
                # endpoint, say) is never success: its body is not the object, and a PUT was not stored.
                where = response.headers.get("location", "")[:120]
                raise PdcatError(
                    f"storage answered HTTP {response.status_code} (a redirect{' to ' + where if where else ''}) "
                    f"for {what}; the catalog's storage endpoint or region is misconfigured"
                )
            if response.status_code in (401, 403):
                raise UrlRefused(f"storage refused the URL for {what} (HTTP {response.status_code})")
            if response.status_code >= 500 or response.status_code == 429:
                last = Unavailable(f"storage answered HTTP {response.status_code} for {what}")
                continue
            if response.status_code == 404:
                raise BlobMissing(f"storage answered HTTP 404 (no such object) for {what}")
            if response.status_code >= 400:
                raise PdcatError(f"storage answered HTTP {response.status_code} for {what}")
            return response
        raise RetriesExceeded(f"giving up on {what} after {self.retries + 1} attempts: {last}") from last

    def put(self, url: str, data: bytes, what: str, headers: Mapping[str, str] | None = None) -> None:
        """``headers``: what the catalog said every PUT must carry (``put_headers``), e.g. Azure's blob type."""
        self._attempt(what, lambda: self._http.put(url, content=data, headers=headers))

    def get(self, url: str, what: str) -> bytes:
        return self._attempt(what, lambda: self._http.get(url)).content


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

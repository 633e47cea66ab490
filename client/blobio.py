"""Moving chunk bytes to and from presigned URLs, as :mod:`client.retry` says.

The client used here never carries catalog credentials: a presigned URL is its own authorisation.
It trusts the servers the catalog client trusts (``trust``: the embedded server's presigned URLs are
its own https URLs), and a certificate that does not verify is final, never retried.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from client.net import Trust, proxy_configured, tls_context, tls_failure
from client.retry import BlobMissing, RetriesExceeded, RetryPolicy, UrlRefused, check_storage
from core.errors import PdcatError

__all__ = ["BlobClient", "BlobMissing", "BlobTooLarge", "RetriesExceeded", "UrlBook", "UrlRefused"]


log = logging.getLogger("pdcat.blobio")
T = TypeVar("T")


class BlobTooLarge(PdcatError):
    """Storage answered more bytes than the object can hold (final: the object is not what was asked)."""


_PIECE = 256 * 1024
"""How much of a PUT body is handed to httpx at a time (see ``_ReleasedBody``)."""


class _ReleasedBody(httpx.SyncByteStream):
    """A PUT body, handed over in pieces, that lets go of its bytes once the request is over.

    Pieces: h11 joins each piece it is given into a new ``bytes``, and httpcore then re-slices the
    rest of it after every ``send()`` (another copy each time). Given a whole 4 MiB object, a slow
    upload held two or three copies of it and copied megabytes per send call; a push over a WAN, with
    every transfer slow, held ~8 MiB more per transfer in flight. In 256 KiB pieces that is 256 KiB.

    Release: httpx keeps a finished response in a reference cycle (the response and its stream) that
    holds the request, and so the body, until the cyclic garbage collector runs: without this a push
    holds every chunk it sent since the last collection, not just the ones in flight."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data: bytes | memoryview = data

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self._data)
        for start in range(0, len(view), _PIECE):
            yield view[start : start + _PIECE]  # type: ignore[misc]  # h11 takes any bytes-like object

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
        trust: Trust = Trust(),  # noqa: B008 (a frozen value)
    ) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        context = tls_context(trust) if transport is None else None  # one context, for both paths
        self._http = httpx.Client(
            transport=transport, limits=limits, timeout=timeout, follow_redirects=False, verify=context or True
        )
        self._direct = _Direct(timeout, context) if context is not None and _Direct.usable() else None
        self.policy = RetryPolicy(retries, backoff)

    def close(self) -> None:
        self._http.close()
        if self._direct is not None:
            self._direct.close()

    def _run(self, attempt: Callable[[str], T], url: str, what: str, refresh: Callable[[], str] | None) -> T:
        """``attempt(url)`` under the retry policy; ``refresh``: a fresh URL for the same object, asked
        for when storage refuses this one. A TLS failure is final (:class:`client.net.UntrustedServer`)."""
        urls = [url]

        def checked() -> T:
            try:
                return attempt(urls[-1])
            except httpx.TransportError as exc:
                parts = urlsplit(urls[-1])
                failure = tls_failure(exc, f"{parts.scheme}://{parts.netloc}")
                if failure is not None:
                    raise failure from exc
                raise

        return self.policy.run(checked, what, refresh=None if refresh is None else lambda: urls.append(refresh()))

    def _send(self, method: str, url: str, what: str, refresh: Callable[[], str] | None, **options: Any) -> bytes:
        def attempt(target: str) -> bytes:
            response = self._http.request(method, target, **options)
            check_storage(response, what)
            return response.content

        return self._run(attempt, url, what, refresh)

    def put(
        self,
        url: str,
        data: bytes | memoryview,
        what: str,
        headers: Mapping[str, str] | None = None,
        *,
        refresh: Callable[[], str] | None = None,
    ) -> None:
        """``headers``: what the catalog said every PUT must carry (``put_headers``), e.g. Azure's blob type."""
        sized = {**(headers or {}), "Content-Length": str(len(data))}

        def attempt(target: str) -> None:
            if self._direct is not None:
                return self._direct.put(target, what, data, sized)
            body = _ReleasedBody(data)
            try:
                request = self._http.build_request("PUT", target, headers=sized)
                request.stream = body
                response = self._http.send(request)
                response.read()
                check_storage(response, what)
            finally:
                body.release()

        self._run(attempt, url, what, refresh)

    def get(self, url: str, what: str, *, refresh: Callable[[], str] | None = None) -> bytes:
        return self._send("GET", url, what, refresh)

    def get_into(self, url: str, what: str, into: memoryview, *, refresh: Callable[[], str] | None = None) -> int:
        """GET an object straight into ``into`` (a caller's reusable buffer) and return its length.

        The body is copied part by part as it arrives: no whole-object ``bytes`` is ever built, so a
        pull's memory is its buffers, whatever the VM size. A body longer than ``into`` is
        :class:`BlobTooLarge`; a dropped connection is retried from the start, like any GET.
        """

        def attempt(target: str) -> int:
            if self._direct is not None:
                return self._direct.get_into(target, what, into)
            with self._http.stream("GET", target) as response:
                if response.status_code >= 300:
                    response.read()
                    check_storage(response, what)
                got = 0
                for part in response.iter_bytes():
                    end = got + len(part)
                    if end > len(into):
                        raise BlobTooLarge(f"storage answered more than {len(into)} bytes for {what}")
                    into[got:end] = part
                    got = end
                return got

        return self._run(attempt, url, what, refresh)


_ERROR_BODY = 64 * 1024  # what is read of an error answer (storage's XML or JSON reason)


class _Direct:
    """GETs into a caller's buffer and PUTs of a whole object with the standard library's
    ``http.client``. A GET's body goes from the socket straight into the buffer (``readinto``, without
    the GIL), where httpx parses it in Python (h11) at about three times the CPU per byte, which a pull
    pays for every chunk on cores it needs for decompressing and hashing. A PUT hands the object to
    one ``sendall`` (no pieces, no copies in Python), where httpx and h11 cost a push about a tenth of
    its client's CPU on cores it needs for compressing. One keep-alive connection per thread and origin.

    Only used where it behaves as httpx does: no custom transport (tests inject one), no proxy
    configured on this machine, and TLS verified with the blob client's one context (the same rules
    as the catalog client's direct path in :mod:`client.api`). Statuses go through ``check_storage``;
    network failures become httpx's transport errors, so the retry policy treats them as before.
    """

    def __init__(self, timeout: float, context: ssl.SSLContext) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[http.client.HTTPConnection] = []
        self._ssl = context

    @staticmethod
    def usable() -> bool:
        return not proxy_configured()

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()

    def get_into(self, url: str, what: str, into: memoryview) -> int:
        origin, response = self._request("GET", url, what, None, {"Accept-Encoding": "identity"})
        try:
            return self._read(response, what, into)
        except BaseException:
            self._drop(origin)
            raise

    def put(self, url: str, what: str, data: bytes | memoryview, headers: Mapping[str, str]) -> None:
        """PUT ``data`` whole. A presigned PUT of an object is idempotent, so a kept-alive connection
        the server had closed is retried on a new one, as a GET is."""
        origin, response = self._request("PUT", url, what, data, headers)
        try:
            body = response.read(_ERROR_BODY)
            if response.status >= 300 or not response.isclosed():
                self._drop(origin)  # an error, or an answer longer than storage sends: never reused
            check_storage(httpx.Response(response.status, headers=response.getheaders(), content=body), what)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(origin)
            raise _transport_error(exc, what) from exc

    def _request(
        self, method: str, url: str, what: str, body: bytes | memoryview | None, headers: Mapping[str, str]
    ) -> tuple[tuple[str, str, int | None], http.client.HTTPResponse]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PdcatError(f"storage gave an unusable URL for {what}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        origin = (parts.scheme, parts.hostname, parts.port)
        sent = {**headers, "User-Agent": "pdcat/0.1"}
        for retry_stale in (True, False):
            conn, reused = self._connection(origin)
            try:
                conn.request(method, target, body=body, headers=sent)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                early = _early_answer(conn) if body is not None and not isinstance(exc, TimeoutError) else None
                if early is not None:
                    response = early  # the caller drops the connection: the body was cut short
                    break
                self._drop(origin)
                if reused and retry_stale and not isinstance(exc, TimeoutError):
                    continue  # a kept-alive connection the server had closed meanwhile: once more, on a new one
                raise _transport_error(exc, what) from exc
            break
        log.info('HTTP Request: %s %s "HTTP/1.1 %d %s"', method, url, response.status, response.reason)
        return origin, response

    def _read(self, response: http.client.HTTPResponse, what: str, into: memoryview) -> int:
        encoding = (response.getheader("content-encoding") or "identity").strip().lower()
        if response.status >= 300:
            body = response.read(_ERROR_BODY)
            check_storage(httpx.Response(response.status, headers=response.getheaders(), content=body), what)
        if encoding != "identity":
            raise PdcatError(f"storage answered a {encoding[:20]}-encoded body for {what}, which pdcat does not decode")
        got = 0
        try:
            while True:
                if got == len(into):
                    if response.read(1):
                        raise BlobTooLarge(f"storage answered more than {len(into)} bytes for {what}")
                    break
                n = response.readinto(into[got:])
                if not n:
                    break
                got += n
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(exc, what) from exc
        if response.length:  # the connection ended before the Content-Length it announced
            raise httpx.RemoteProtocolError(f"storage closed the connection mid-body for {what}")
        return got

    def _connection(self, origin: tuple[str, str, int | None]) -> tuple[http.client.HTTPConnection, bool]:
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(origin)
        if conn is not None:
            return conn, True
        scheme, host, port = origin
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        conns[origin] = conn
        with self._lock:
            self._open.append(conn)
        return conn, False

    def _drop(self, origin: tuple[str, str, int | None]) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop(origin, None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)


def _early_answer(conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    """What storage answered before it stopped reading a body, if it did: S3 refuses an expired or
    bad signature from the headers and closes, and that 403 (a URL to refresh, not a network fault to
    retry as it is) is waiting in the socket. httpx reads it the same way."""
    try:
        return conn.getresponse()
    except (OSError, http.client.HTTPException):
        return None


def _transport_error(exc: BaseException, what: str) -> httpx.TransportError:
    """A network failure as the httpx error the retry policy knows (a timeout, or a failed read)."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"{what}: {reason}")
    if isinstance(exc, (ConnectionRefusedError, ssl.SSLError)):
        return httpx.ConnectError(f"{what}: {reason}")
    return httpx.ReadError(f"{what}: {reason}")


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
        self._done: set[str] = set()

    def get(self, digest: str) -> str:
        with self._lock:
            url = self._urls.get(digest)
            if url is None:
                start = self._position.get(digest, 0)
                later = [d for d in self._order[start + 1 :] if d not in self._urls and d not in self._done]
                wanted = [digest, *later[: self._page - 1]]
                self._urls.update(self._fetch(wanted))
                url = self._urls[digest]
            return url

    def done(self, digest: str) -> None:
        """The object is transferred: forget its URL (and never fetch one again), so the book holds
        about a page of URLs at a time, not one per chunk of the VM."""
        with self._lock:
            self._urls.pop(digest, None)
            self._done.add(digest)

    def refresh(self, digest: str) -> str:
        """Drop the URL (it was refused) and everything fetched with it, then fetch fresh ones."""
        with self._lock:
            self._urls.clear()
        return self.get(digest)

"""The embedded catalog over HTTP: a WSGI app (API + signed blob URLs) served by waitress.

``/api/v1/...`` goes to the one router. ``/blobs/<key>?method=&expires=&signature=`` is the local
stand-in for S3/Blob presigned URLs: every request is checked against its HMAC signature, expiry,
key and method before a byte is read or written. Being WSGI, the same app also runs in-process in
tests through ``httpx.WSGITransport``.

Served by :class:`LocalServer`, waitress with limits of its own, because waitress reads a whole
request before the app sees it: each request's body limit is decided from its head, before a body
byte is read (the API's 1 MiB; a staged chunk's or index's size for a ``/blobs/`` PUT, whose
signature is checked first), and enforced while the body streams in (chunked bodies too); a refusal
is answered at once in the API's error shape and the rest of that body is discarded, never
buffered. Connections that idle, trickle a header or stall a body are closed, and at the connection
limit the longest-idle ones make room, so a flood of idle sockets cannot stall ``/health``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote

from waitress.adjustments import Adjustments
from waitress.buffers import FileBasedBuffer, OverflowableBuffer
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import Error as WaitressError
from waitress.utilities import RequestEntityTooLarge

from core.chunk_check import compressed_bound
from core.errors import Forbidden, InvalidInput, MethodNotAllowed, PayloadTooLarge, PdcatError, Unavailable
from core.http import MAX_BODY, Request, Response
from core.local.bootstrap import LocalCatalog
from core.logs import log_access, shown_query
from core.pack import MAX_CHUNK_SIZE
from core.storage_layout import nonce_of_staging_key, staging_index_key
from core.wire import MAX_INDEX_BYTES

__all__ = [
    "API_BODY_LIMIT",
    "CHUNK_PUT_LIMIT",
    "CONNECTION_LIMIT",
    "INDEX_PUT_LIMIT",
    "MAX_REQUEST_BODY",
    "LocalServer",
    "WsgiApp",
    "blob_put_limit",
]

log = logging.getLogger("pdcat.server")

StartResponse = Callable[..., Any]
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_BLOCK = 1024 * 1024
_BLOB_QUERY = ("method", "expires")
"""What a blob URL's access line shows of its query: never its ``signature``."""

# ---- what one request may send (decided from its head, before a body byte is read) -------------
API_BODY_LIMIT = MAX_BODY
"""Every API route: pdcat's 1 MiB budget (core.limits.API_BODY_BUDGET_BYTES)."""
CHUNK_PUT_LIMIT = compressed_bound(MAX_CHUNK_SIZE)
"""A staged chunk (``/blobs/staging/<nonce>/chunks/<digest>`` PUT): a zstd frame of at most 64 MiB raw."""
INDEX_PUT_LIMIT = MAX_INDEX_BYTES
"""A staged index (``/blobs/staging/<nonce>/index.json`` PUT)."""
MAX_REQUEST_BODY = max(API_BODY_LIMIT, CHUNK_PUT_LIMIT, INDEX_PUT_LIMIT)
"""waitress's own cap (a backstop: every route's limit is at most this)."""

# ---- connections (measured: tests/integration/test_server_limits.py) ----------------------------
CONNECTION_LIMIT = 256
"""Open connections; at the limit the longest-idle ones (no request, or an unfinished header) are
closed to make room instead of new connections waiting in the backlog."""
IDLE_TIMEOUT_S = 15.0
"""A connection waiting for its first or next request (clients' keep-alive pools expire sooner)."""
HEADER_TIMEOUT_S = 10.0
"""From a request's first byte to the end of its header (slowloris)."""
MIN_BODY_RATE = 32 * 1024
"""A body must arrive at this many bytes/s on average, after HEADER_TIMEOUT_S of grace (slow POSTs)."""
STALL_TIMEOUT_S = 60
"""waitress's ``channel_timeout``: no byte in or out for this long while a body or answer is in flight."""
CLEANUP_INTERVAL_S = 1
SEND_BYTES = 256 * 1024
"""The most of an answer waitress reads for one send (its ``send_bytes`` too)."""
INBUF_OVERFLOW = 256 * 1024
"""A body larger than this waits in an (unlinked, 0600) temp file, not in memory."""
MAX_HEADER_BYTES = 64 * 1024
LINGER_S = 2.0
LINGER_BYTES = 16 * 1024 * 1024
"""After a refusal, the rest of the body is read and dropped for this long (at most this much), so
the client that sent it anyway still reads the answer rather than a connection reset."""

# ---- TLS (``pdcat serve --tls-cert/--tls-key`` or ``--tls-self-signed``) --------------------------
HANDSHAKE_TIMEOUT_S = 10.0
"""From a TLS connection's accept to the end of its handshake (one that never finishes is closed)."""
TLS_SEND_BYTES = 64 * 1024
"""The most one write hands to TLS: OpenSSL reports a write only once all of it is sent, so this
bounds how long a slow reader can look stalled (STALL_TIMEOUT_S) while it is still reading."""
_TLS_HANDSHAKE_RECORD = b"\x16"
_PLAIN_TO_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
_PLAIN_TO_TLS_BODY = json.dumps(
    {
        "error": {
            "code": "invalid_input",
            "message": "this catalog speaks HTTPS only: use https:// instead of http:// in its URL "
            "(--server, PDCAT_SERVER)",
        }
    }
).encode()


class _LengthRequired(PdcatError):
    """A blob PUT without Content-Length: its limit is checked before a byte is read, so one is needed."""

    status = 411
    code = "length_required"


def blob_put_limit(key: str) -> int:
    """The largest body a PUT to ``key`` may carry: clients only PUT staged chunks and indexes."""
    nonce = nonce_of_staging_key(key)
    if nonce is not None and key == staging_index_key(nonce):
        return INDEX_PUT_LIMIT
    return CHUNK_PUT_LIMIT


def _raw_path(environ: dict[str, Any]) -> str:
    """The still-percent-encoded path, so an encoded ``/`` inside an id cannot change the route."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        return str(raw).split("?", 1)[0]
    path = str(environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8", "replace")
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def _content_length(environ: dict[str, Any]) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("invalid Content-Length") from None
    if value < 0:
        raise InvalidInput("invalid Content-Length")
    return value


class _FileIterator:
    """Streams an open file in blocks and always closes it (WSGI calls ``close``)."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __iter__(self) -> Iterator[bytes]:
        while block := self._f.read(_BLOCK):
            yield block

    def close(self) -> None:
        self._f.close()


class WsgiApp:
    """``catalog`` may be attached after the socket is bound (its public URL needs the port)."""

    def __init__(self, catalog: LocalCatalog | None = None) -> None:
        self._catalog = catalog

    @property
    def catalog(self) -> LocalCatalog:
        if self._catalog is None:
            raise Unavailable("the catalog is starting")
        return self._catalog

    @catalog.setter
    def catalog(self, value: LocalCatalog) -> None:
        self._catalog = value

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The API's requests are logged by the router; blob transfers and what is refused before the
        router sees it, here: a transfer at DEBUG (one line per chunk would drown the rest), a refusal
        at INFO."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = _raw_path(environ)
        started = time.perf_counter()
        try:
            if path.startswith("/blobs/"):
                answer, size = self._blob(environ, start_response, method, path[len("/blobs/") :])
                self._log(environ, method, path, 200, size, started, level=logging.DEBUG)
                return answer
            return self._api(environ, start_response, method, path)
        except PdcatError as exc:
            response = Response.error(exc.status, exc.code, exc.message)
            self._log(environ, method, path, exc.status, len(response.body), started, error=(exc.code, exc.message))
            return self._send(start_response, response)
        except Exception:
            log.exception("unhandled error in the embedded server")
            response = Response.error(500, "internal", "internal error")
            self._log(environ, method, path, 500, len(response.body), started, error=("internal", "unhandled error"))
            return self._send(start_response, response)

    @staticmethod
    def _log(
        environ: dict[str, Any],
        method: str,
        path: str,
        status: int,
        size: int,
        started: float,
        *,
        error: tuple[str, str] | None = None,
        level: int = logging.INFO,
    ) -> None:
        query_string = str(environ.get("QUERY_STRING", ""))
        _log_request(method, path, query_string, status, size, started, environ.get("REMOTE_ADDR"), error, level)

    @staticmethod
    def _send(start_response: StartResponse, response: Response) -> list[bytes]:
        headers = dict(response.headers)
        headers["Content-Length"] = str(len(response.body))
        start_response(f"{response.status} {_REASONS.get(response.status, 'Unknown')}", list(headers.items()))
        return [response.body]

    def _api(self, environ: dict[str, Any], start_response: StartResponse, method: str, path: str) -> list[bytes]:
        length = _content_length(environ) or 0
        if length > MAX_BODY:
            raise PayloadTooLarge(f"request body is larger than {MAX_BODY} bytes")
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = str(environ["CONTENT_TYPE"])
        query = dict(parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True))
        response = self.catalog.router.dispatch(Request(method, path, query, headers, body, environ.get("REMOTE_ADDR")))
        return self._send(start_response, response)

    def body_limit(self, method: str, raw_path: str, query_string: str) -> int:
        """The most body bytes this request may send, from its head alone (the server asks before it
        reads a body byte). A ``/blobs/`` PUT must be validly signed first: raises the refusal."""
        if raw_path.startswith("/blobs/") and method == "PUT":
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            return blob_put_limit(self._verified_blob_key(method, raw_path[len("/blobs/") :], query))
        return API_BODY_LIMIT

    def body_spool(self, method: str, raw_path: str) -> Path | None:
        """Where to spool this request's body if it overflows memory: the blob store's own temp
        folder for a ``/blobs/`` PUT (stored by a rename), else None (waitress's anonymous file)."""
        if method == "PUT" and raw_path.startswith("/blobs/"):
            return cast(Path | None, getattr(self.catalog.blobs, "spool_dir", None))
        return None

    def _verified_blob_key(self, method: str, raw_key: str, query: dict[str, str]) -> str:
        key = unquote(raw_key)
        signed_method = "GET" if method == "HEAD" else method
        if signed_method not in ("GET", "PUT"):
            raise MethodNotAllowed("signed blob URLs allow GET, HEAD and PUT only")
        if query.get("method", "").upper() != signed_method:
            raise Forbidden(f"this URL was not signed for {method}")
        self.catalog.blobs.verify(key, signed_method, query.get("expires", ""), query.get("signature", ""))
        return key

    def _blob(
        self, environ: dict[str, Any], start_response: StartResponse, method: str, raw_key: str
    ) -> tuple[Iterable[bytes], int]:
        """The answer, and the bytes it moves: the body stored (PUT) or about to be sent (GET)."""
        query = dict(parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True))
        key = self._verified_blob_key(method, raw_key, query)
        blobs = self.catalog.blobs
        if method == "PUT":
            length = _content_length(environ)
            if length is None:
                raise _LengthRequired("send Content-Length")
            if length > blob_put_limit(key):
                raise PayloadTooLarge(f"an upload to this URL is at most {blob_put_limit(key)} bytes")
            blobs.write_stream(key, environ["wsgi.input"], length)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""], length
        f, size = blobs.open_for_read(key)
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        start_response("200 OK", headers)
        if method == "HEAD":
            f.close()
            return [b""], 0
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(f, _BLOCK), size
        return _FileIterator(f), size


def _log_request(
    method: str,
    path: str,
    query_string: str,
    status: int,
    size: int,
    started: float,
    client: str | None,
    error: tuple[str, str] | None = None,
    level: int = logging.INFO,
) -> None:
    """The access line of a request the router did not see (a blob transfer, or a refusal before it)."""
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    log_access(
        log,
        method=method,
        path=path,
        query=shown_query(query, _BLOB_QUERY if path.startswith("/blobs/") else ()),
        status=status,
        size=size,
        started=started,
        client=client,
        error=error,
        level=level,
    )


class _Refusal(WaitressError):
    """A request refused from its head (or mid-body), answered in the API's JSON error shape."""

    def __init__(self, exc: PdcatError) -> None:
        super().__init__(exc.message)
        self.code = exc.status
        self.reason = _REASONS.get(exc.status, "Error")
        self._answer = Response.error(exc.status, exc.code, exc.message)

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:  # type: ignore[override]
        return f"{self.code} {self.reason}", [("Content-Type", "application/json")], self._answer.body


class _LimitedParser(HTTPRequestParser):
    """waitress's parser, plus a per-request body limit decided when the header ends (before any body
    byte is buffered) and enforced on every byte after it, chunked bodies included."""

    def __init__(self, adj: Adjustments, channel: _Channel) -> None:
        super().__init__(adj)
        self._channel = channel
        self.started = time.monotonic()
        self.clock = time.perf_counter()  # for its access line (log_access's clock)
        self.limit: int = adj.max_request_body_size

    def received(self, data: bytes) -> int:
        if self.completed:
            return 0
        in_header = self.body_rcv is None
        consumed: int = super().received(data)
        # waitress's own cap (max_request_body_size) is answered in the API's shape too
        too_large = isinstance(self.error, RequestEntityTooLarge)
        if (self.error is not None and not too_large) or self.body_rcv is None:
            return consumed
        if in_header:
            if self.completed and not too_large:
                return consumed
            app = self._channel.server.pdcat_app
            raw_path = str(getattr(self, "request_uri", "")).split("?", 1)[0]
            query = str(getattr(self, "query", ""))
            method = str(self.command).upper()
            try:
                self.limit = app.body_limit(method, raw_path, query)
            except PdcatError as exc:
                return self._refuse(exc, len(data))
            if too_large or self.content_length > self.limit:
                return self._refuse(self._too_large(), len(data))
            spool = app.body_spool(method, raw_path)
            if spool is not None:  # no body byte is buffered yet: waitress feeds the body from the next call
                self.body_rcv.buf = _SpooledBody(self.adj.inbuf_overflow, spool)
        elif too_large or len(self.body_rcv) > self.limit:
            return self._refuse(self._too_large(), len(data))
        return consumed

    def _log_refusal(self, exc: PdcatError) -> None:
        raw_path = str(getattr(self, "request_uri", "")).split("?", 1)[0]
        addr = self._channel.addr
        _log_request(
            str(self.command).upper(),
            raw_path,
            str(getattr(self, "query", "")),
            exc.status,
            len(self.error.to_response()[2]) if isinstance(self.error, _Refusal) else 0,
            self.clock,
            str(addr[0]) if isinstance(addr, tuple) and addr else None,
            (exc.code, exc.message),
        )

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.limit} bytes")

    def _refuse(self, exc: PdcatError, datalen: int) -> int:
        """Answer now (and close); the rest of the body is discarded, never buffered."""
        self.error = _Refusal(exc)
        self._log_refusal(exc)
        self.completed = True
        self.expect_continue = False  # no "100 Continue" for a body that is refused
        self._channel.linger_wanted = True
        if self.body_rcv is not None:
            self.body_rcv.getbuf().close()
        return datalen  # the rest of this read belongs to the refused body


class _SpoolFile(FileBasedBuffer):
    """A request body too large for memory, in a named file of the blob store's temp folder (as
    waitress would put it in an anonymous one): the store adopts the file by name
    (``FileBlobStore._adopt``), so an uploaded chunk reaches the disk once instead of being copied."""

    def __init__(self, spool: Path, from_buffer: Any = None) -> None:
        fd, path = tempfile.mkstemp(dir=spool, prefix="body-", suffix=".part")
        os.close(fd)
        super().__init__(cast(Any, open(path, "r+b")), from_buffer)  # noqa: SIM115 (closed by close())
        self._path = path

    def newfile(self) -> Any:
        return tempfile.TemporaryFile("w+b", dir=os.path.dirname(self._path))

    def close(self) -> None:
        """Remove the file unless the store adopted it: its name then names another file, or none."""
        with suppress(OSError, ValueError):
            mine, there = os.fstat(self.file.fileno()), os.stat(self._path, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(self._path)
        super().close()


class _SpooledBody(OverflowableBuffer):
    """waitress's body buffer (memory, then a file past ``overflow``) whose file is a ``_SpoolFile``."""

    def __init__(self, overflow: int, spool: Path) -> None:
        super().__init__(overflow)
        self._spool = spool

    def _set_large_buffer(self) -> None:
        oldbuf = self.buf
        self.buf = cast(Any, _SpoolFile(self._spool, oldbuf))
        if oldbuf is not None:
            oldbuf.close()
        self.overflowed = True


class _Channel(HTTPChannel):
    """A connection that can linger after a refusal: its answer is sent and its write side shut,
    then whatever the client still sends is read and dropped (up to LINGER_S, LINGER_BYTES), so a
    client that sends its whole body before reading still gets the answer instead of a reset."""

    server: _Server
    linger_wanted = False
    lingering = False
    _linger_deadline = 0.0
    _linger_left = 0

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Adjustments, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        # waitress reads this much of an answer for each send (the socket's SO_SNDBUF, MiBs on loopback)
        # and reads again what the send left: a blob GET re-read its file. Capped, a pull's server CPU
        # fell 1.27-1.33 -> 0.99-1.10 CPU s (a 1.9 GB bundle, three pulls each).
        self.sendbuf_len = min(self.sendbuf_len, SEND_BYTES)

    def parser_class(self, adj: Adjustments) -> _LimitedParser:  # type: ignore[override]
        return _LimitedParser(adj, self)

    def readable(self) -> bool:
        return True if self.lingering else bool(super().readable())

    def writable(self) -> bool:
        if self.lingering:
            return time.monotonic() >= self._linger_deadline
        return bool(super().writable())

    def handle_write(self) -> None:
        if self.lingering:  # the linger time is over
            HTTPChannel.handle_close(self)
            return
        super().handle_write()

    def handle_read(self) -> None:
        if not self.lingering:
            super().handle_read()
            return
        sock = self.socket
        assert sock is not None
        try:
            data = sock.recv(self.adj.recv_bytes)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._linger_left -= len(data)
        if not data or self._linger_left <= 0 or time.monotonic() >= self._linger_deadline:
            HTTPChannel.handle_close(self)

    def handle_close(self) -> None:
        if self.linger_wanted and not self.lingering and self.connected and not self.total_outbufs_len:
            try:
                if self.socket is not None:
                    self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.lingering = True
                self.will_close = self.close_when_flushed = False
                self._linger_deadline = time.monotonic() + LINGER_S
                self._linger_left = LINGER_BYTES
                return
        request = self.request
        if request is not None and not request.completed:
            request.close()  # a body cut off mid-way: waitress leaves it to the GC, but a spooled one has a name
        super().handle_close()

    def waiting_for_header(self) -> bool:
        """No request being served or answered, and none (or only part of a header) received."""
        request = self.request
        return (
            not self.requests
            and not self.total_outbufs_len
            and not self.lingering
            and (request is None or not request.headers_finished)
        )


class _TlsChannel(_Channel):
    """A connection to a TLS server: the channel above over a non-blocking TLS socket. waitress parses
    the decrypted bytes exactly as it parses plain ones, so every limit (body limits from the head,
    idle, header, body-rate and stall timeouts, the connection limit and whom it evicts) applies
    unchanged, and REMOTE_ADDR is the peer's address, as the login throttle and the logs need.

    What TLS adds: the handshake comes first, driven by poll like any read, within
    HANDSHAKE_TIMEOUT_S; a read may have to write first (``_want_write``); a read takes every
    decrypted byte the TLS object holds (``pending``), since poll cannot see those; a write the kernel
    could not take whole is retried with the same bytes, which waitress does (it drops only what was
    sent). OpenSSL objects are not thread-safe and waitress can write from a task thread while its
    main loop reads: every TLS call holds the channel's lock. A first byte that is not a TLS
    handshake (plain HTTP to this port) is answered in plain HTTP: use https.
    """

    handshaking = True
    _want_write = False
    _wrapped = False

    def __init__(self, server: _Server, sock: socket.socket, addr: Any, adj: Adjustments, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        # waitress reads this much of an answer for every write, and TLS takes TLS_SEND_BYTES of it
        self.sendbuf_len = min(self.sendbuf_len, TLS_SEND_BYTES)
        self._tls_lock = threading.Lock()
        self.accepted_at = time.monotonic()

    def readable(self) -> bool:
        if self.handshaking and not self.lingering:
            return not (self._want_write or self.will_close)
        return super().readable()

    def writable(self) -> bool:
        if self.handshaking and not self.lingering:
            return self._want_write or self.will_close
        return self._want_write or super().writable()

    def handle_read(self) -> None:
        if self.lingering:
            super().handle_read()  # the raw socket, read and dropped
        elif self.handshaking:
            self._handshake()
        else:
            self._read()

    def handle_write(self) -> None:
        if self._want_write and not self.lingering:  # a handshake or a read waits for the socket to take a write
            self._want_write = False
            self.handle_read()
        if self.handshaking and not self.lingering:
            if self.will_close:  # evicted, or out of time
                self.handle_close()
            return
        super().handle_write()

    def _handshake(self) -> None:
        failure: BaseException | None = None
        first = b""
        with self._tls_lock:
            sock = self.socket
            if sock is None:
                return
            if not self._wrapped:
                try:
                    first = sock.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    first = b""
                if first == _TLS_HANDSHAKE_RECORD:
                    context = self.server.tls_context
                    assert context is not None
                    self.socket = sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    self._wrapped = True
            if self._wrapped:
                try:
                    sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    return
                except ssl.SSLWantWriteError:
                    self._want_write = True
                    return
                except OSError as exc:  # ssl.SSLError included
                    failure = exc
                else:
                    self.handshaking = False
                    self.last_activity = time.time()
        if not self._wrapped:
            self._refuse_plain(first)
        elif failure is not None:
            if isinstance(failure, ssl.SSLError) and not isinstance(failure, ssl.SSLEOFError):
                log.info("TLS handshake refused", extra={"client": self.addr[0], "reason": str(failure)[:200]})
            self.handle_close()
        else:
            self._read()  # a request may have come with the handshake's last message

    def _refuse_plain(self, first: bytes) -> None:
        """Plain HTTP on the TLS port: say so in plain HTTP (then linger, so the client reads it)."""
        if first and self.socket is not None:
            try:
                self.socket.send(_PLAIN_TO_TLS % (len(_PLAIN_TO_TLS_BODY), _PLAIN_TO_TLS_BODY))
            except OSError:
                pass
            else:
                self.linger_wanted = True
        self.handle_close()

    def _read(self) -> None:
        data, ended = self._decrypt(self.adj.recv_bytes)
        if data:
            self.last_activity = time.time()
            self.received(data)
        if ended:
            self.handle_close()

    def _decrypt(self, size: int) -> tuple[bytes, bool]:
        """What the peer sent (up to ``size`` bytes, plus what TLS still holds decrypted), and whether
        the connection ended (closed, reset or broken)."""
        view = memoryview(self.server.tls_buffer)  # the main loop's alone: only it reads
        got, ended = 0, False
        with self._tls_lock:
            sock = self.socket
            if sock is None:
                return b"", True
            try:
                while got < size or (got < len(view) and sock.pending()):  # type: ignore[attr-defined]
                    want = size - got if got < size else min(sock.pending(), len(view) - got)  # type: ignore[attr-defined]
                    n = sock.recv_into(view[got:], want)
                    if not n:
                        ended = True
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLWantWriteError:
                self._want_write = True
            except OSError:  # reset, or a TLS error (ssl.SSLError): the connection is over
                ended = True
        return bytes(view[:got]), ended

    def send(self, data: Any, do_close: bool = True) -> int:
        """wasyncore's ``send`` over TLS: 0 while the socket cannot take it (waitress sends the same
        bytes again)."""
        with self._tls_lock:
            sock = self.socket
            if sock is None or self.handshaking:
                return 0
            try:
                return int(sock.send(memoryview(data)[:TLS_SEND_BYTES]))
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return 0
            except OSError:  # reset, or the TLS session is broken (ssl.SSLError): a dropped connection
                pass
        if do_close:
            self.handle_close()
        return 0


class _Server(TcpWSGIServer):
    """waitress's TCP server with pdcat's channel and its idle, header and body deadlines."""

    channel_class: type[_Channel] = _Channel

    def __init__(self, application: Any, pdcat_app: WsgiApp, tls: ssl.SSLContext | None = None, **kw: Any) -> None:
        self.pdcat_app = pdcat_app
        self.tls_context = tls
        if tls is not None:
            self.channel_class = _TlsChannel
            adj: Adjustments = kw["adj"]
            self.tls_buffer = bytearray(adj.recv_bytes + TLS_SEND_BYTES)  # room for what TLS holds past recv_bytes
        super().__init__(application, **kw)

    def _channels(self) -> list[_Channel]:
        channels: dict[int, _Channel] = self.active_channels  # type: ignore[assignment]
        return list(channels.values())

    def _open_count(self) -> int:
        return len(getattr(self, "_map", ()))

    def readable(self) -> bool:
        if self.accepting and self._open_count() >= self.adj.connection_limit:
            self._make_room()
        return bool(super().readable())

    def _make_room(self) -> None:
        """At the connection limit: close the longest-idle connections that are not in a request."""
        channels = self._channels()
        closing = sum(1 for c in channels if c.will_close or c.lingering)
        wanted = self._open_count() - self.adj.connection_limit + max(1, self.adj.connection_limit // 16) - closing
        if wanted <= 0:
            return
        idle = [c for c in channels if not c.will_close and c.waiting_for_header()]
        idle.sort(key=lambda c: c.last_activity)
        for channel in idle[:wanted]:
            channel.will_close = True

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # type: ignore[arg-type]  # channel_timeout: nothing moved for STALL_TIMEOUT_S
        mono = time.monotonic()
        for channel in self._channels():
            if channel.requests or channel.lingering or channel.total_outbufs_len:
                continue
            request = cast(_LimitedParser | None, channel.request)
            if isinstance(channel, _TlsChannel) and channel.handshaking:
                expired = mono - channel.accepted_at > HANDSHAKE_TIMEOUT_S
            elif request is None:
                expired = now - channel.last_activity > IDLE_TIMEOUT_S
            elif not request.headers_finished:
                expired = mono - request.started > HEADER_TIMEOUT_S
            else:
                expected = request.content_length or request.limit
                expired = mono - request.started > HEADER_TIMEOUT_S + expected / MIN_BODY_RATE
            if expired:
                channel.will_close = True


def _raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: make sure the soft limit leaves room for them."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # pragma: no cover - best effort
        log.warning("could not raise the open-files limit: %s", exc)


class LocalServer:
    """A real, multi-threaded HTTP server (waitress) for the embedded catalog, with pdcat's limits."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        threads: int = 16,
        *,
        connection_limit: int = CONNECTION_LIMIT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: the server's context (``core.local.tls``); every connection then speaks TLS."""
        _raise_open_files_limit(connection_limit + 256)
        adj = Adjustments(
            host=host,
            port=port,
            threads=threads,
            connection_limit=connection_limit,
            channel_timeout=STALL_TIMEOUT_S,
            cleanup_interval=CLEANUP_INTERVAL_S,
            asyncore_use_poll=True,  # select() cannot watch descriptors past 1023
            # waitress refuses a body of max_request_body_size bytes or more; every route's own limit
            # is checked first (_LimitedParser), this is the backstop.
            max_request_body_size=MAX_REQUEST_BODY + 1,
            max_request_header_size=MAX_HEADER_BYTES,
            inbuf_overflow=INBUF_OVERFLOW,
            recv_bytes=256 * 1024,
            send_bytes=SEND_BYTES,
            outbuf_overflow=16 * 1024 * 1024,
            clear_untrusted_proxy_headers=True,
            ident="pdcat",
        )
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        socket_map: dict[int, Any] = {}
        servers = [
            _Server(app, app, tls, map=socket_map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
            for sockinfo in adj.listen
        ]
        listening = [(getattr(s, "effective_host", host), int(getattr(s, "effective_port", port))) for s in servers]
        self._server = MultiSocketServer(socket_map, adj, listening, dispatcher, servers[0].log_info)
        self.host = host
        self.port: int = listening[0][1]

    def serve_forever(self) -> None:
        self._server.run()

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="pdcat-server", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._server.close()


def data_dir_default() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("pdcat")) / "catalog"

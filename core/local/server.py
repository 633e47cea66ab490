"""The embedded catalog over HTTP: a WSGI app (API + signed blob URLs) served by waitress.

``/api/v1/...`` goes to the one router. ``/blobs/<key>?method=&expires=&signature=`` is the local
stand-in for S3/Blob presigned URLs: every request is checked against its HMAC signature, expiry,
key and method before a byte is read or written. Being WSGI, the same app also runs in-process in
tests through ``httpx.WSGITransport``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from core.errors import Forbidden, InvalidInput, MethodNotAllowed, PayloadTooLarge, PdcatError, Unavailable
from core.http import MAX_BODY, Request, Response
from core.local.bootstrap import LocalCatalog

__all__ = ["LocalServer", "WsgiApp"]

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
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_BLOCK = 1024 * 1024


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
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = _raw_path(environ)
        try:
            if path.startswith("/blobs/"):
                return self._blob(environ, start_response, method, path[len("/blobs/") :])
            return self._api(environ, start_response, method, path)
        except PdcatError as exc:
            return self._send(start_response, Response.error(exc.status, exc.code, exc.message))
        except Exception:
            log.exception("unhandled error in the embedded server")
            return self._send(start_response, Response.error(500, "internal", "internal error"))

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
        response = self.catalog.router.dispatch(Request(method, path, query, headers, body))
        return self._send(start_response, response)

    def _blob(
        self, environ: dict[str, Any], start_response: StartResponse, method: str, raw_key: str
    ) -> Iterable[bytes]:
        key = unquote(raw_key)
        query = dict(parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True))
        signed_method = "GET" if method == "HEAD" else method
        if signed_method not in ("GET", "PUT"):
            raise MethodNotAllowed("signed blob URLs allow GET, HEAD and PUT only")
        if query.get("method", "").upper() != signed_method:
            raise Forbidden(f"this URL was not signed for {method}")
        blobs = self.catalog.blobs
        blobs.verify(key, signed_method, query.get("expires", ""), query.get("signature", ""))
        if signed_method == "PUT":
            length = _content_length(environ)
            if length is None:
                start_response("411 Length Required", [("Content-Type", "application/json")])
                return [json.dumps({"error": {"code": "length_required", "message": "send Content-Length"}}).encode()]
            blobs.write_stream(key, environ["wsgi.input"], length)
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        f, size = blobs.open_for_read(key)
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
        start_response("200 OK", headers)
        if method == "HEAD":
            f.close()
            return [b""]
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(f, _BLOCK)  # type: ignore[no-any-return]
        return _FileIterator(f)


class LocalServer:
    """A real, multi-threaded HTTP server (waitress) for the embedded catalog."""

    def __init__(self, app: WsgiApp, host: str, port: int, threads: int = 16) -> None:
        from waitress.server import create_server

        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=2 * 1024 * 1024 * 1024,
            # Chunk bodies are tens of MiB: read and write in big blocks and keep a body in memory
            # rather than spilling it to a temp file first (the blob store writes its own temp file).
            recv_bytes=256 * 1024,
            send_bytes=256 * 1024,
            inbuf_overflow=128 * 1024 * 1024,
            outbuf_overflow=16 * 1024 * 1024,
            channel_timeout=300,
            clear_untrusted_proxy_headers=True,
            ident="pdcat",
        )
        self.host = host
        self.port: int = self._server.effective_port  # type: ignore[union-attr]

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

"""A small local stand-in for the Azure Functions host: serves a v2-model function app over real HTTP.

Core Tools (``func``) cannot be installed offline, so this does, for HTTP triggers, what the real host
and Python worker do between the socket and the user's function:

- load ``function_app.py`` from the app folder (the folder first on ``sys.path``, as the worker does)
  and index ``app.get_functions()`` through the function metadata the worker sends the host;
- treat the request path as Kestrel does: percent-decode it except ``%2F`` (an encoded ``/`` stays
  encoded), keep an invalid UTF-8 sequence encoded, refuse a NUL with a bare 400, remove dot segments;
- match the route templates as ASP.NET routing does (``routePrefix`` from ``host.json``, case-insensitive
  literals, ``{name}``, ``{name?}``, ``{*rest}``; the most specific template wins; a method the trigger
  does not list is no match), and answer the host's own empty 404 when nothing matches;
- build ``func.HttpRequest`` with the URL the host builds (``{scheme}://{host}{path}{query}``, the
  path re-escaped like ``PathString.ToUriComponent``), the query (blank values dropped, repeats
  joined with ``,``), lower-case headers, route values and the raw body;
- refuse a request body over the host's size limit (100 MB, ``core/limits.py``) with a bare 413
  before anything else, from its Content-Length first, never reading more than the limit;
- call the user function and turn its answer into HTTP with the worker's own converter
  (``HttpResponseConverter``, which adds the default Content-Type); an exception is an empty 500.

``FunctionsHost`` is the in-memory part (also used by the tests' in-process httpx transport);
``python infra/local/azure_host.py --port N`` serves it with waitress, and :func:`start_azure_host`
runs that as a child process. :func:`azure_backend_env` prepares a Cosmos DB emulator database and
an Azurite container and returns the app settings that point the Azure frontend at them.
"""

from __future__ import annotations

import argparse
import http
import importlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from core.limits import FUNCTIONS_REQUEST_BYTES

if TYPE_CHECKING:
    from infra.local.servers import RunningProcess

__all__ = [
    "APP_DIR",
    "FunctionsHost",
    "HostResponse",
    "RouteTemplate",
    "azure_backend_env",
    "kestrel_path",
    "start_azure_host",
    "wsgi_app",
]

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "azure_app"
MAX_REQUEST_BODY = FUNCTIONS_REQUEST_BYTES
"""The Functions host's default request size limit (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT``): a larger
request is refused with a bare 413 before the app runs."""

log = logging.getLogger("pdcat.azure_host")

_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")
# PathString.ToUriComponent keeps these and valid %XX escapes; it percent-encodes everything else.
_PATH_CHARS = frozenset("!$&'()*+,-./0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


class BadRequest(ValueError):
    """Kestrel refuses the request line before any routing (a bare 400)."""


# --- Kestrel's view of the path ---------------------------------------------------------------------


def _percent_byte(raw: bytes, i: int) -> int | None:
    """The byte that ``%XX`` at ``i`` encodes, or None (not an escape, or ``%2F``, which stays encoded)."""
    match = _HEX.match(raw, i)
    if match is None:
        return None
    value = int(match.group(1), 16)
    return None if value == 0x2F else value


def _decode_sequence(raw: bytes, i: int) -> tuple[bytes, int] | None:
    """One percent-encoded UTF-8 character starting at ``i``: its bytes and where it ends, or None."""
    first = _percent_byte(raw, i)
    if first is None:
        return None
    if first == 0:
        raise BadRequest("the path contains null characters")
    if first <= 0x7F:
        return bytes([first]), i + 3
    if first & 0xE0 == 0xC0:
        count, bits, minimum = 2, first & 0x1F, 0x80
    elif first & 0xF0 == 0xE0:
        count, bits, minimum = 3, first & 0x0F, 0x800
    elif first & 0xF8 == 0xF0:
        count, bits, minimum = 4, first & 0x07, 0x10000
    else:
        return None
    out = [first]
    j = i + 3
    for _ in range(count - 1):
        nxt = _percent_byte(raw, j)
        if nxt is None or nxt & 0xC0 != 0x80:
            return None
        bits = (bits << 6) | (nxt & 0x3F)
        out.append(nxt)
        j += 3
    if bits < minimum or 0xD800 <= bits <= 0xDFFF or bits > 0x10FFFF:
        return None
    return bytes(out), j


def _kestrel_decode(raw: bytes) -> bytes:
    """Kestrel's ``UrlDecoder.DecodeInPlace`` (not form encoding): what cannot be decoded is kept."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"%":
            decoded = _decode_sequence(raw, i)
            if decoded is not None:
                out += decoded[0]
                i = decoded[1]
                continue
        out.append(raw[i])
        i += 1
    return bytes(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path, as Kestrel's ``PathNormalizer`` does after decoding."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def kestrel_path(raw_path: str) -> str:
    """``HttpRequest.Path`` for this request target's path: decoded but ``%2F``, dot segments removed."""
    raw = raw_path.encode("latin-1")
    if not raw.startswith(b"/"):
        raise BadRequest("the request target must be an absolute path")
    if b"\x00" in raw:
        raise BadRequest("the path contains null characters")
    try:
        decoded = _kestrel_decode(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8") from None
    return _remove_dot_segments(decoded)


def to_uri_component(path: str) -> str:
    """``PathString.ToUriComponent``: valid ``%XX`` escapes stay, anything outside the path set is escaped."""
    out: list[str] = []
    i = 0
    while i < len(path):
        if _ESCAPE.match(path, i):
            out.append(path[i : i + 3])
            i += 3
            continue
        ch = path[i]
        out.append(ch if ch in _PATH_CHARS else quote(ch, safe=""))
        i += 1
    return "".join(out)


# --- ASP.NET route templates ------------------------------------------------------------------------

_LITERAL, _PARAM, _OPTIONAL, _CATCH_ALL = 0, 1, 2, 3
_PARAM_RE = re.compile(r"\{(\*{1,2})?([A-Za-z_][A-Za-z0-9_]*)(\?)?\}")


@dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET route template, whole segments only (what HTTP triggers use); constraints refused."""

    text: str
    segments: tuple[tuple[int, str], ...]

    @classmethod
    def parse(cls, text: str) -> RouteTemplate:
        segments: list[tuple[int, str]] = []
        parts = [p for p in text.strip("/").split("/")] if text.strip("/") else []
        for index, part in enumerate(parts):
            if "{" not in part and "}" not in part:
                segments.append((_LITERAL, part))
                continue
            match = _PARAM_RE.fullmatch(part)
            if match is None:
                raise ValueError(f"route {text!r}: this local host supports whole-segment {{name}}, {{name?}} "
                                 f"and {{*rest}} parameters only, not {part!r}")  # fmt: skip
            star, name, optional = match.groups()
            if star and index != len(parts) - 1:
                raise ValueError(f"route {text!r}: a catch-all parameter must be the last segment")
            segments.append((_CATCH_ALL, name) if star else (_OPTIONAL, name) if optional else (_PARAM, name))
        return cls(text, tuple(segments))

    @property
    def precedence(self) -> tuple[int, ...]:
        """Smaller is more specific: literal < parameter < optional < catch-all, segment by segment."""
        return tuple(kind for kind, _ in self.segments)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        values: dict[str, str] = {}
        for index, (kind, text) in enumerate(self.segments):
            if kind == _CATCH_ALL:
                rest = "/".join(parts[index:])
                if rest:
                    values[text] = rest
                return values
            if index >= len(parts):
                if all(k in (_OPTIONAL, _CATCH_ALL) for k, _ in self.segments[index:]):
                    return values
                return None
            if kind == _LITERAL:
                if parts[index].lower() != text.lower():
                    return None
            else:
                values[text] = parts[index]
        return values if len(parts) == len(self.segments) else None


def _segments(path: str) -> list[str]:
    """Path segments as routing sees them: a trailing slash does not count."""
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


# --- the host ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class _HttpFunction:
    name: str
    template: RouteTemplate
    methods: frozenset[str] | None
    trigger_arg: str
    call: Callable[..., Any]
    bindings: list[dict[str, Any]]
    """The function's metadata as the worker reports it to the host (``function.json`` form)."""


@dataclass
class FunctionsHost:
    """The HTTP-trigger functions of one app, routed as the Functions host routes them."""

    functions: list[_HttpFunction]
    route_prefix: str
    _order: list[_HttpFunction] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._order = sorted(self.functions, key=lambda f: f.template.precedence)

    @classmethod
    def load(cls, app_dir: Path = APP_DIR) -> FunctionsHost:
        """Import ``function_app.py`` as the worker does and index its HTTP functions, once per process.

        Once, like the worker: ``FunctionApp.get_functions()`` refuses to index the same app twice.
        """
        key = app_dir.resolve()
        if key not in _LOADED:
            _LOADED[key] = cls._index(key)
        return _LOADED[key]

    @classmethod
    def _index(cls, app_dir: Path) -> FunctionsHost:
        import azure.functions as func

        if str(app_dir) not in sys.path:
            sys.path.insert(0, str(app_dir))
        module = importlib.import_module("function_app")
        apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
        if len(apps) != 1:
            raise RuntimeError(f"{app_dir / 'function_app.py'} must define exactly one FunctionApp, found {len(apps)}")
        host_json = json.loads((app_dir / "host.json").read_text())
        prefix = host_json.get("extensions", {}).get("http", {}).get("routePrefix", "api")
        functions: list[_HttpFunction] = []
        for fn in apps[0].get_functions():
            bindings = json.loads(fn.get_function_json())["bindings"]
            trigger = next((b for b in bindings if b.get("type") == "httpTrigger"), None)
            if trigger is None:
                log.info("function %s is not HTTP-triggered: this local host skips it", fn.get_function_name())
                continue
            name = fn.get_function_name() or "function"
            user_function = fn.get_user_function()
            extra = set(inspect.signature(user_function).parameters) - {trigger["name"]}
            if extra:
                raise RuntimeError(f"function {name}: this local host passes only the request, not {sorted(extra)}")
            methods = trigger.get("methods")
            functions.append(
                _HttpFunction(
                    name=name,
                    template=RouteTemplate.parse("/".join(p for p in (prefix, trigger.get("route") or name) if p)),
                    methods=frozenset(str(m).upper() for m in methods) if methods else None,
                    trigger_arg=trigger["name"],
                    call=user_function,
                    bindings=bindings,
                )
            )
        return cls(functions, prefix)

    def handle(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        scheme: str = "http",
        host: str = "localhost",
    ) -> HostResponse:
        """One request: ``target`` is the request target exactly as sent (raw path and query)."""
        headers = list(headers)
        if too_large(headers) or len(body) > MAX_REQUEST_BODY:
            return HostResponse(413, [("Content-Length", "0")], b"")
        raw_path, _, raw_query = target.partition("?")
        try:
            path = kestrel_path(raw_path)
        except BadRequest:
            return HostResponse(400, [("Content-Length", "0")], b"")
        parts = _segments(path)
        for fn in self._order:
            values = fn.template.match(parts)
            if values is None or (fn.methods is not None and method.upper() not in fn.methods):
                continue
            return self._invoke(fn, method, path, raw_query, headers, body, values, scheme, host)
        return HostResponse(404, [("Content-Length", "0")], b"")

    def _invoke(
        self,
        fn: _HttpFunction,
        method: str,
        path: str,
        raw_query: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        route_values: dict[str, str],
        scheme: str,
        host: str,
    ) -> HostResponse:
        from azure.functions.http import HttpRequest, HttpResponseConverter

        merged: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        params: dict[str, str] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            params[name] = f"{params[name]},{value}" if name in params else value
        request = HttpRequest(
            method=method.upper(),
            url=f"{scheme}://{host}{to_uri_component(path)}{'?' + raw_query if raw_query else ''}",
            headers=merged,
            params={k: v for k, v in params.items() if v},
            route_params=route_values,
            body_type="bytes",
            body=body,
        )
        invocation_id = str(uuid.uuid4())
        try:
            answer = fn.call(**{fn.trigger_arg: request})
            datum = HttpResponseConverter.encode(answer, expected_type=None)
        except Exception:
            log.exception("function %s failed (invocation %s)", fn.name, invocation_id)
            return HostResponse(500, [("Content-Length", "0")], b"")
        if datum.type == "string":
            text = str(datum.value).encode()
            return HostResponse(200, [("Content-Type", "text/plain; charset=utf-8")], text)
        value = datum.value
        out_headers = [(name, str(h.value)) for name, h in value["headers"].items()]
        return HostResponse(int(value["status_code"].value), out_headers, bytes(value["body"].value or b""))


_LOADED: dict[Path, FunctionsHost] = {}


def too_large(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a Content-Length header announces a body over the host's limit."""
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                if int(value.strip()) > MAX_REQUEST_BODY:
                    return True
            except ValueError:
                continue
    return False


# --- over HTTP --------------------------------------------------------------------------------------


def wsgi_app(functions_host: FunctionsHost) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """The host as a WSGI app; the raw request target (``REQUEST_URI``) keeps every escape as sent."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        target = str(environ.get("REQUEST_URI") or environ.get("RAW_URI") or "")
        if not target:
            target = quote(str(environ.get("PATH_INFO", "/")).encode("latin-1"), safe="/")
            if environ.get("QUERY_STRING"):
                target += "?" + str(environ["QUERY_STRING"])
        headers = [(k[5:].replace("_", "-").lower(), str(v)) for k, v in environ.items() if k.startswith("HTTP_")]
        for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
            if environ.get(key):
                headers.append((name, str(environ[key])))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_REQUEST_BODY:  # refused from the header alone: the body is never read
            start_response("413 Payload Too Large", [("Content-Length", "0"), ("Connection", "close")])
            return [b""]
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        answer = functions_host.handle(
            str(environ.get("REQUEST_METHOD", "GET")),
            target,
            headers,
            body,
            scheme=str(environ.get("wsgi.url_scheme", "http")),
            host=str(environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"),
        )
        out = [(k, v) for k, v in answer.headers if k.lower() != "content-length"]
        out.append(("Content-Length", str(len(answer.body))))
        phrase = http.HTTPStatus(answer.status).phrase if answer.status in http.HTTPStatus._value2member_map_ else ""
        start_response(f"{answer.status} {phrase}".strip(), out)
        return [answer.body]

    return app


def serve(functions_host: FunctionsHost, host: str, port: int) -> None:
    from waitress.server import create_server

    server = create_server(
        wsgi_app(functions_host),
        host=host,
        port=port,
        threads=16,
        max_request_body_size=MAX_REQUEST_BODY,  # a larger request: 413 from its head, its body never buffered
        recv_bytes=256 * 1024,
        send_bytes=256 * 1024,
        inbuf_overflow=128 * 1024 * 1024,
        channel_timeout=300,
        clear_untrusted_proxy_headers=True,
        ident="azure-functions-local",
    )
    print(f"serving on http://{host}:{server.effective_port}", flush=True)  # type: ignore[union-attr]
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the Azure Functions app (HTTP triggers) on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app", type=Path, default=APP_DIR, help="the function app folder (function_app.py)")
    args = parser.parse_args(argv)
    # core is bundled next to function_app.py by infra's build step; here it is the repository itself.
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    functions_host = FunctionsHost.load(args.app.resolve())
    serve(functions_host, args.host, args.port)
    return 0


def azure_backend_env(
    cosmos: RunningProcess, azurite: RunningProcess, jwt_secret: str, *, log_level: str = "WARNING"
) -> dict[str, str]:
    """A fresh database + container on the Cosmos DB emulator and a fresh Blob container on Azurite,
    and the app settings that point the Azure frontend at them (account keys: the emulators' public ones).

    Each call makes new, uniquely named ones, so several backends can share the two emulators.
    """
    from infra.local.azurite import azurite_connection_string
    from infra.local.cosmos_emulator import COSMOS_EMULATOR_KEY, COSMOS_EMULATOR_VERIFY_TLS

    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    from azurelib.blob_store import AzureBlobStore
    from azurelib.cosmos_store import connect

    name = f"pdcat-{uuid.uuid4().hex[:12]}"
    connection_string = azurite_connection_string(azurite.url)
    connect(cosmos.url, name, "catalog", key=COSMOS_EMULATOR_KEY, verify_tls=COSMOS_EMULATOR_VERIFY_TLS, create=True)
    blobs = AzureBlobStore.from_connection_string(connection_string, name)
    try:
        blobs.create_container()
    finally:
        blobs.close()
    return {
        "PDCAT_COSMOS_ENDPOINT": cosmos.url,
        "PDCAT_COSMOS_KEY": COSMOS_EMULATOR_KEY,
        "PDCAT_COSMOS_DATABASE": name,
        "PDCAT_COSMOS_CONTAINER": "catalog",
        "PDCAT_COSMOS_VERIFY_TLS": "true" if COSMOS_EMULATOR_VERIFY_TLS else "false",
        "PDCAT_BLOB_CONNECTION_STRING": connection_string,
        "PDCAT_BLOB_CONTAINER": name,
        "PDCAT_JWT_SECRET": jwt_secret,
        "PDCAT_LOG_LEVEL": log_level,
    }


def start_azure_host(env: Mapping[str, str], log_dir: Path, *, timeout: float = 60.0) -> RunningProcess:
    """The function app under this host as a child process on a free loopback port, once it is healthy.

    ``env`` are the app settings (see :func:`azure_backend_env`). The first ``/api/v1/health`` builds
    the catalog, so a bad setting fails here, with the host's log, rather than in the first test.
    """
    import httpx

    from infra.local.servers import RunningProcess, free_port

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"azure-host-{port}.log"
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--port", str(port)],
        cwd=APP_DIR,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", **env},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    problem = "it did not answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            problem = f"it exited with status {process.returncode}"
            break
        try:
            r = httpx.get(f"{url}/api/v1/health", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if r.status_code == 200:
            return RunningProcess(url, process, log_path)
        problem = f"/api/v1/health answered {r.status_code}: {r.text[:500]}"
        if r.status_code != 503:
            break
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    raise RuntimeError(f"the Azure Functions host on {url} did not start ({problem}); its log:\n"
                       f"{log_path.read_text()[-4000:]}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

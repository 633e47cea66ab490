"""The catalog API, as the client sees it: one method per route, core's error classes on failure.

Every call is one JSON request (:meth:`CatalogClient.request`), sent one of two ways:

* straight to the catalog with the standard library's ``http.client`` (``_Direct``), for a catalog
  reached over plain http(s) with no proxy: cheap to start, so ``pdcat ls`` never loads httpx;
* through httpx (``_ViaHttpx``) whenever the two could differ: a test's transport (the embedded WSGI
  app in-process, a mock), a proxy configured on this machine (httpx's ``trust_env``), or a URL the
  direct path does not take as it is (credentials or a query in it, a non-ASCII host...).

Either way the request is the same (body, query and headers are built once, in ``request``), TLS is
verified with the same context (``client.net.tls_context``: certifi, or ``SSL_CERT_FILE``/
``SSL_CERT_DIR``, plus the login's ``--cacert``), idle connections are kept 5 s, no redirect is
followed, a request that gets no answer raises :class:`ConnectionFailed` with the same words, and a
certificate that does not verify raises ``client.net.UntrustedServer``, saying what to do. Storage URLs
are fetched with a *separate* client that never carries the catalog credentials (``client.blobio``).
"""

from __future__ import annotations

import json as jsonlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import SplitResult, quote, urlencode, urlsplit

from client.net import Trust, proxy_configured, tls_context, tls_failure
from core.errors import PdcatError, Unavailable, error_for_status

if TYPE_CHECKING:
    import http.client
    import ssl

    import httpx

    from client.token_refresh import RefreshingToken
    from core.wire import ChunksAnswer, IndexAnswer, ReportAnswer, VerifyAnswer

__all__ = ["CatalogClient", "ConnectionFailed"]

log = logging.getLogger("pdcat.api")

#: How long an idle connection waits for the next call before it is dropped (httpx's keep-alive expiry).
KEEPALIVE_SECONDS = 5.0


class ConnectionFailed(Unavailable):
    """The catalog server could not be reached at all."""


def _seg(value: str) -> str:
    return quote(value, safe="")


_NO_ANSWER = {
    "ConnectError": "the connection failed. Is the catalog running there, and is the URL right (--server, "
    "PDCAT_SERVER)?",
    "WriteError": "the connection broke while sending. Run the command again",
    "ReadError": "the connection broke before the answer came. Run the command again",
    "RemoteProtocolError": "it closed the connection without a valid answer. Is that URL a pdcat catalog?",
    "LocalProtocolError": "the request could not be sent (a header no request may carry)",
}


def _unreachable(url: str, kind: str, *, timed_out: bool = False) -> ConnectionFailed:
    """What a request that got no answer raises, however it was sent (``kind``: httpx's name for what
    happened), in words that say what to do next."""
    if timed_out:
        return ConnectionFailed(f"the catalog at {url} did not answer in time. Check the network, then run it again")
    return ConnectionFailed(f"cannot reach the catalog at {url}: {_NO_ANSWER.get(kind, kind)}")


def _query(params: Mapping[str, Any]) -> str:
    """``params`` as httpx encodes them: JSON-style booleans, None as empty, a list as repeated keys."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else (value,):
            text = "true" if item is True else "false" if item is False else "" if item is None else str(item)
            pairs.append((key, text))
    return urlencode(pairs)


class _Answer(NamedTuple):
    status: int
    content: bytes


# ---- straight to the catalog ------------------------------------------------------------------
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_:")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _direct_url(base_url: str) -> SplitResult | None:
    """``base_url`` split, when the direct path reaches it exactly as httpx would; None sends through httpx."""
    try:
        url = urlsplit(base_url)
        port = url.port  # a port that is not a number raises ValueError
    except ValueError:
        return None
    host = url.hostname or ""
    plain = (
        url.scheme in ("http", "https")
        and host != ""
        and set(host) <= _HOST_CHARS
        and port != 0
        and "@" not in url.netloc
        and not url.query
        and not url.fragment
        and quote(url.path, safe=_PATH_SAFE) == url.path
    )
    return url if plain and not proxy_configured() else None


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed (or written to) by the server: it cannot take a request."""
    import select

    sock = connection.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods sent again after a kept-alive connection turned out closed (RFC 9110 9.2.2: idempotent and safe)."""


class _Stale(Exception):
    """The connection ended before any byte of an answer: ``error`` is what to raise unless the request
    is sent again."""

    def __init__(self, error: ConnectionFailed) -> None:
        super().__init__(str(error))
        self.error = error


class _Direct:
    """HTTP/1.1 with ``http.client``: a pool of keep-alive connections, safe to share between threads
    (a push asks from several)."""

    def __init__(self, url: SplitResult, shown: str, headers: Mapping[str, str], timeout: float, trust: Trust) -> None:
        """``shown``: the catalog's URL as given, for messages."""
        self._url = url
        self._shown = shown
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.path.rstrip("/") + "/api/v1"
        self._headers = {"Accept": "*/*", "Connection": "keep-alive", **headers}
        self._timeout, self._trust = timeout, trust
        self._tls: ssl.SSLContext | None = None
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()

    def _connection(self, *, fresh: bool = False) -> http.client.HTTPConnection:
        """An idle connection still good (the most recent first), or a new one (not yet connected);
        ``fresh``: a new one."""
        now = time.monotonic()
        with self._lock:
            while self._idle and not fresh:
                since, connection = self._idle.pop()
                if now - since < KEEPALIVE_SECONDS and not _dropped(connection):
                    return connection
                connection.close()
            if self._url.scheme == "https" and self._tls is None:
                self._tls = tls_context(self._trust)
        import http.client

        host = self._url.hostname or ""
        if self._tls is not None:
            return http.client.HTTPSConnection(host, self._port, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(host, self._port, timeout=self._timeout)

    def send(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> _Answer:
        connection = self._connection()
        reused = connection.sock is not None
        try:
            return self._exchange(connection, method, target, body, headers)
        except _Stale as stale:
            # A kept-alive connection the server closed as this request went out (its idle timeout ending
            # between our check and our write): a request that changes nothing goes again, once, on a new
            # connection, as Go's and urllib3's clients do; one that changes something may have been done.
            if not (reused and method in _REPLAYABLE):
                raise stale.error from stale.__cause__
        try:
            return self._exchange(self._connection(fresh=True), method, target, body, headers)
        except _Stale as again:  # a new connection that broke too: the server is going away
            raise again.error from again.__cause__

    def _exchange(
        self, connection: http.client.HTTPConnection, method: str, target: str, body: bytes | None,
        headers: Mapping[str, str],
    ) -> _Answer:  # fmt: skip
        import http.client

        try:
            if connection.sock is None:
                try:
                    connection.connect()
                except TimeoutError as exc:
                    raise _unreachable(self._shown, "ConnectTimeout", timed_out=True) from exc
                except OSError as exc:  # refused, no such host, a certificate that does not verify...
                    raise (tls_failure(exc, self._shown) or _unreachable(self._shown, "ConnectError")) from exc
            try:
                connection.request(method, self._prefix + target, body, {**self._headers, **headers})
            except TimeoutError as exc:
                raise _unreachable(self._shown, "WriteTimeout", timed_out=True) from exc
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _Stale(_unreachable(self._shown, "WriteError")) from exc
            except OSError as exc:
                raise _unreachable(self._shown, "WriteError") from exc
            except (ValueError, http.client.HTTPException) as exc:  # a header no request may carry (a newline...)
                raise _unreachable(self._shown, "LocalProtocolError") from exc
            response: http.client.HTTPResponse | None = None
            try:
                response = connection.getresponse()
                content = response.read()
            except TimeoutError as exc:
                raise _unreachable(self._shown, "ReadTimeout", timed_out=True) from exc
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                kind = "RemoteProtocolError" if isinstance(exc, http.client.HTTPException) else "ReadError"
                error = _unreachable(self._shown, kind)
                raise (_Stale(error) if response is None else error) from exc  # stale: closed before any answer
            except http.client.HTTPException as exc:  # closed without an answer, a malformed one...
                raise _unreachable(self._shown, "RemoteProtocolError") from exc
            except OSError as exc:
                raise _unreachable(self._shown, "ReadError") from exc
        except BaseException:
            connection.close()
            raise
        version = "HTTP/1.0" if response.version == 10 else "HTTP/1.1"
        log.info('HTTP Request: %s %s "%s %d %s"', method, self._shown + "/api/v1" + target, version,
                 response.status, response.reason)  # fmt: skip
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append((time.monotonic(), connection))
        return _Answer(response.status, content)


# ---- through httpx ------------------------------------------------------------------------------
class _ViaHttpx:
    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        transport: httpx.BaseTransport | None,
        timeout: float,
        trust: Trust,
    ) -> None:
        import httpx

        self._shown = base_url
        verify = tls_context(trust) if transport is None else True  # a transport of a test's own speaks no TLS
        self.client = httpx.Client(
            base_url=base_url + "/api/v1", headers=dict(headers), transport=transport, timeout=timeout, verify=verify
        )

    def close(self) -> None:
        self.client.close()

    def send(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]) -> _Answer:
        import httpx

        try:
            response = self.client.request(method, target, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise _unreachable(self._shown, type(exc).__name__, timed_out=True) from exc
        except httpx.TransportError as exc:
            raise (tls_failure(exc, self._shown) or _unreachable(self._shown, type(exc).__name__)) from exc
        return _Answer(response.status_code, response.content)


class CatalogClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        login: RefreshingToken | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        verify: bool = True,
        cacert: str | None = None,
    ) -> None:
        """``token`` is sent as given; ``login`` is a password login's token, refreshed before it runs out
        (``client.token_refresh``). ``transport``: an httpx transport to send through instead of the
        network (tests). ``cacert``: a CA certificate (or the server's self-signed one) to trust besides
        the default roots; ``verify=False`` only for a PDFile's INSECURE. Storage is reached with the
        same :attr:`trust` (``BlobClient(trust=api.trust)``): the embedded server's URLs are its own."""
        self.base_url = base_url.rstrip("/")
        self._login = login
        headers = {"User-Agent": "pdcat/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-Api-Key"] = api_key
        self.trust = Trust(verify, cacert)
        self._settings = (headers, transport, timeout)
        direct = None if transport is not None else _direct_url(self.base_url)
        self._sender: _Direct | _ViaHttpx
        if direct is not None:
            self._sender = _Direct(direct, self.base_url, headers, timeout, self.trust)
        else:
            self._sender = _ViaHttpx(self.base_url, headers, transport, timeout, self.trust)

    def __repr__(self) -> str:  # never show credentials
        return f"CatalogClient({self.base_url!r})"

    @property
    def _http(self) -> httpx.Client:
        """The httpx client, for a test that hooks into it (its ``event_hooks``): from the first time it is
        asked for, every call goes through it."""
        if not isinstance(self._sender, _ViaHttpx):
            self._sender.close()
            headers, transport, timeout = self._settings
            self._sender = _ViaHttpx(self.base_url, headers, transport, timeout, self.trust)
        return self._sender.client

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """One call: ``json`` as the body (as httpx encodes it), ``params`` as the query; the answer's JSON
        (None if it has no body), or the error the catalog answered as one of core's classes."""
        target = f"{path}?{_query(params)}" if params else path
        body, headers = None, {}
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self._login is not None:
            headers["Authorization"] = f"Bearer {self._login.current(self._refresh)}"
        return self._answer(path, *self._sender.send(method, target, body, headers))

    def _refresh(self, token: str) -> dict[str, Any]:
        """``POST /auth/refresh`` with ``token``: a new one of the same login (``client.token_refresh``)."""
        answer = self._sender.send("POST", "/auth/refresh", None, {"Authorization": f"Bearer {token}"})
        result: dict[str, Any] = self._answer("/auth/refresh", *answer)
        return result

    def _answer(self, path: str, status: int, content: bytes) -> Any:
        if status == 401 and path != "/auth/token":
            raise self._unauthenticated(self._error(status, content))
        if status >= 400:
            raise self._error(status, content)
        if status == 204 or not content:
            return None
        return jsonlib.loads(content)

    def _unauthenticated(self, error: PdcatError) -> PdcatError:
        """A 401 says what to do next, by the credential this client sent."""
        headers = self._settings[0]
        user = self._login.username if self._login is not None and self._login.username else "USER"
        login = f"pdcat login --server {self.base_url} -u {user}"
        if "X-Api-Key" in headers:
            hint = "check PDCAT_API_KEY (an admin creates a new key with 'pdcat apikey create')"
        elif "Authorization" in headers or self._login is not None:
            hint = f"log in again: {login}"
        else:
            hint = f"log in first: {login}"
        return type(error)(f"{error.message}; {hint}")

    @staticmethod
    def _error(status: int, content: bytes) -> PdcatError:
        code, message = None, f"the catalog answered HTTP {status}"
        try:
            body = jsonlib.loads(content)
            code = body["error"]["code"]
            message = body["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        return error_for_status(status, code, message)

    @staticmethod
    def _m(catalog_id: str, version: str, arch: str) -> str:
        return f"/catalog/{_seg(catalog_id)}/{_seg(version)}/{_seg(arch)}"

    # ---- auth -----------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/auth/token", json={"username": username, "password": password})
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/auth/whoami")
        return result

    def create_api_key(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/auth/api-keys", json=body)
        return result

    # ---- the embedded server's users ------------------------------------------------------------
    def list_users(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/admin/users")["items"]
        return result

    def add_user(self, username: str, password: str, roles: list[str], claims: list[str]) -> dict[str, Any]:
        body = {"username": username, "password": password, "roles": roles, "claims": claims}
        result: dict[str, Any] = self.request("POST", "/admin/users", json=body)
        return result

    def remove_user(self, username: str) -> None:
        self.request("DELETE", f"/admin/users/{_seg(username)}")

    def set_user_roles(self, username: str, roles: list[str], claims: list[str]) -> dict[str, Any]:
        body = {"roles": roles, "claims": claims}
        result: dict[str, Any] = self.request("PUT", f"/admin/users/{_seg(username)}/roles", json=body)
        return result

    def set_password(self, username: str, password: str, current: str | None = None) -> None:
        body = {"password": password, **({"current_password": current} if current is not None else {})}
        self.request("PUT", f"/admin/users/{_seg(username)}/password", json=body)

    def list_api_keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/auth/api-keys")["items"]
        return result

    def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/auth/api-keys/{_seg(key_id)}")
        return result

    # ---- catalog --------------------------------------------------------------------------
    def list_manifests(
        self, *, tag: str | None = None, architecture: str | None = None, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every visible manifest, following ``next_cursor`` page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if tag:
                params["tag"] = tag
            if architecture:
                params["architecture"] = architecture
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", "/catalog", params=params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def versions(self, catalog_id: str, version: str | None = None) -> list[dict[str, Any]]:
        path = f"/catalog/{_seg(catalog_id)}" + (f"/{_seg(version)}" if version else "")
        result: list[dict[str, Any]] = self.request("GET", path)["items"]
        return result

    def get(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._m(catalog_id, version, arch))
        return result

    def delete(
        self, catalog_id: str, version: str | None = None, arch: str | None = None, *, purge: bool = False
    ) -> None:
        path = f"/catalog/{_seg(catalog_id)}"
        if version:
            path += f"/{_seg(version)}"
            if arch:
                path += f"/{_seg(arch)}"
        self.request("DELETE", path, params={"purge": "true"} if purge else None)

    def state(self, catalog_id: str, version: str, arch: str, action: str) -> dict[str, Any]:
        """``action`` is taint, untaint or revoke."""
        result: dict[str, Any] = self.request("PATCH", f"{self._m(catalog_id, version, arch)}/{action}")
        return result

    def edit(
        self, catalog_id: str, version: str, arch: str, field: str, values: list[str], *, add: bool
    ) -> dict[str, Any]:
        """``field`` is roles, claims or tags."""
        method = "PATCH" if add else "DELETE"
        result: dict[str, Any] = self.request(
            method, f"{self._m(catalog_id, version, arch)}/{field}", json={field: values}
        )
        return result

    def update_metadata(self, catalog_id: str, version: str, arch: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", f"{self._m(catalog_id, version, arch)}/metadata", json=fields)
        return result

    # ---- transfers ------------------------------------------------------------------------
    def push_begin(self, catalog_id: str, version: str, arch: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/push", json=body)
        return result

    def upload_chunks(self, upload_id: str, digests: list[str]) -> ChunksAnswer:
        """Which of a page of chunks are verified already, and staging PUT URLs for the others."""
        result: ChunksAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/chunks", json={"digests": digests})
        return result

    def verify_chunks(self, upload_id: str, digests: list[str]) -> VerifyAnswer:
        result: VerifyAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/verify", json={"digests": digests})
        return result

    def declare_index(self, upload_id: str, declared: dict[str, Any]) -> IndexAnswer:
        """Declare the index (digest, size) once the chunks are in; answers where to PUT it."""
        result: IndexAnswer = self.request("POST", f"/uploads/{_seg(upload_id)}/index", json=declared)
        return result

    def commit(self, upload_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/uploads/{_seg(upload_id)}/commit", json={})
        return result

    def abort(self, upload_id: str) -> None:
        self.request("DELETE", f"/uploads/{_seg(upload_id)}")

    def pull(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/pull")
        return result

    def pull_urls(self, catalog_id: str, version: str, arch: str, digests: list[str]) -> dict[str, str]:
        result: dict[str, str] = self.request(
            "POST", f"{self._m(catalog_id, version, arch)}/pull/urls", json={"digests": digests}
        )["urls"]
        return result

    def report_corrupt(self, catalog_id: str, version: str, arch: str, digests: list[str]) -> ReportAnswer:
        """Tell the catalog these chunks failed verification; it re-checks and quarantines them."""
        result: ReportAnswer = self.request(
            "POST", f"{self._m(catalog_id, version, arch)}/pull/report", json={"digests": digests}
        )
        return result

    def pull_pack_url(self, catalog_id: str, version: str, arch: str) -> dict[str, Any]:
        """A fresh ``pack`` object (URL, size, checksum) for an imported original-format pack."""
        result: dict[str, Any] = self.request("POST", f"{self._m(catalog_id, version, arch)}/pull/urls", json={})[
            "pack"
        ]
        return result

    def import_pack(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/catalog/import", json=body)
        return result

    # ---- administration -------------------------------------------------------------------
    def gc(self, *, dry_run: bool, cursor: str | None = None, grace_seconds: float | None = None) -> dict[str, Any]:
        """One step of garbage collection (``POST /admin/gc``); call again with ``next_cursor`` until it
        is None. Counts only: the answer never names a catalog id."""
        body: dict[str, Any] = {"dry_run": dry_run, "cursor": cursor}
        if grace_seconds is not None:
            body["grace_seconds"] = grace_seconds
        result: dict[str, Any] = self.request("POST", "/admin/gc", json=body)
        return result

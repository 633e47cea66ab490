"""``pdcat --help`` and ``pdcat ls`` start quickly (issue 14: both within 150 ms), and stay so.

What keeps them quick is what they do not load: ``--help`` loads the parser and nothing else of pdcat's;
``ls`` loads neither httpx, the transfer engine nor the cache, because the catalog client sends its JSON
calls with ``http.client`` (``client.api._Direct``). The first tests pin those import sets in a fresh
interpreter; the rest check that the direct path asks the catalog exactly what httpx asks (same
request line, body and headers), fails with the same words, and hands over to httpx whenever the two
could differ. ``bench/startup.py`` measures the times themselves.

A catalog here is a small ``http.server`` on loopback, in this process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.api import _NO_ANSWER, CatalogClient, ConnectionFailed
from client.net import UntrustedServer
from core.errors import Conflict, NotFound, PdcatError

REPO = Path(__file__).resolve().parents[2]

#: Never loaded by ``pdcat --help`` (top-level module names).
NOT_FOR_HELP = {
    "httpx", "httpcore", "h11", "anyio", "certifi", "zstandard", "rich", "pygments", "platformdirs",
    "filelock", "jwt", "cryptography", "sqlite3", "_sqlite3", "ssl", "http", "email", "logging",
    "concurrent", "json", "typing", "dataclasses",
}  # fmt: skip
#: Never loaded by ``pdcat ls`` (top-level module names, then pdcat's own modules).
NOT_FOR_LS = {
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "zstandard",
    "sqlite3",
    "_sqlite3",
    "filelock",
    "jwt",
    "cryptography",
    "keyring",
    "rich",  # tables are plain columns (client.output.columns); rich is for messages and progress bars
    "pygments",
    "ctypes",  # only the commands that move chunks tune the allocator
}
PDCAT_NOT_FOR_LS = ("client.transfer", "client.cache", "client.cli.transfers", "client.packer", "client.blobio",
                    "client.retry", "client.prlctl", "client.vm_setup", "client.recipes", "core.pack")  # fmt: skip

MANIFEST = {
    "catalog_id": "ubuntu",
    "version": "24.04",
    "architecture": "x86_64",
    "size": 3 * 1024**3,
    "status": "ready",
    "tainted": False,
    "revoked": False,
    "tags": ["lts"],
    "pushed_at": "2026-01-02T03:04:05Z",
}


# ---- a catalog on loopback ----------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    target: str  # the request line's target: path and query, as sent
    headers: dict[str, str]  # names lowercased
    body: bytes
    peer: tuple[str, int]  # which connection it came on


Reply = Callable[[str, str], tuple[int, Any]]


@dataclass
class Catalog:
    url: str
    seen: list[Seen] = field(default_factory=list)
    reply: Reply = lambda method, target: (200, {"items": [], "next_cursor": None})
    close_after_answer: bool = False  # answer as keep-alive, then close anyway (an idle timeout)
    hang_up: bool = False  # close every connection without answering (a server going away)


def _handler(catalog: Catalog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the body is written after the headers: no delayed-ACK stalls

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            catalog.seen.append(Seen(self.command, self.path, headers, body, self.client_address))
            if catalog.hang_up:
                self.close_connection = True
                return
            # read before answering: once the client has the answer, the test may change it for the next call
            close_after = catalog.close_after_answer
            status, payload = catalog.reply(self.command, self.path)
            data = b"" if payload is None else payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if close_after:
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def catalog() -> Iterator[Catalog]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    found = Catalog(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(found)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment sends everything through httpx (as it should): not what is tested."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDCAT_") and not k.lower().endswith("_proxy")}
    return {**env, **extra}


def _loaded_after(code: str, env: dict[str, str]) -> tuple[list[str], str]:
    """The modules a fresh interpreter holds after ``code`` (pdcat's commands run in it), and its stdout.
    An entry of None is an import blocked on purpose (``client/__init__.py``), not a module."""
    script = f"import sys\n{code}\nprint('MODULES', *sorted(k for k, v in sys.modules.items() if v is not None))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    *out, last = done.stdout.strip().splitlines()
    marker, *loaded = last.split()
    assert marker == "MODULES"
    return loaded, "\n".join(out)


def _top_level(loaded: list[str]) -> set[str]:
    return {name.split(".")[0] for name in loaded}


# ---- what starting loads ------------------------------------------------------------------------
def test_help_loads_the_parser_and_nothing_heavy() -> None:
    code = "from client.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    loaded, out = _loaded_after(code, _clean_env())
    assert "usage: pdcat" in out
    ours = sorted(m for m in loaded if m.split(".")[0] in ("client", "core"))
    assert ours == ["client", "client.cli", "client.cli.parser"]
    assert sorted(_top_level(loaded) & NOT_FOR_HELP) == []


def test_push_help_still_shows_the_default_chunk_size() -> None:
    from client.cli.parser import build_parser
    from core.pack import DEFAULT_CHUNK_SIZE

    push = build_parser()._subparsers._group_actions[0].choices["push"]  # type: ignore[union-attr]
    assert f"bytes per chunk (default {DEFAULT_CHUNK_SIZE})" in " ".join(push.format_help().split())
    assert push.parse_args(["x", "--chunk-size", "65536"]).chunk_size == 65536
    assert push.parse_args(["x"]).chunk_size is None


def test_ls_loads_neither_httpx_nor_the_transfer_engine(catalog: Catalog, tmp_path: Path) -> None:
    catalog.reply = lambda method, target: (200, {"items": [MANIFEST], "next_cursor": None})
    env = _clean_env(
        PDCAT_SERVER=catalog.url, PDCAT_TOKEN="tok-123", PDCAT_CONFIG_DIR=str(tmp_path), COLUMNS="200", NO_COLOR="1"
    )
    code = "from client.cli import main\nassert main(['ls']) == 0"
    loaded, out = _loaded_after(code, env)
    assert "ubuntu" in out and "24.04" in out and "lts" in out
    assert sorted(_top_level(loaded) & NOT_FOR_LS) == []
    assert [m for m in loaded if m.startswith(PDCAT_NOT_FOR_LS)] == []
    assert "rich.progress" not in loaded  # progress bars are for transfers
    (request,) = catalog.seen
    assert (request.method, request.target) == ("GET", "/api/v1/catalog?limit=100")
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["user-agent"] == "pdcat/0.1"


def test_ls_with_a_stored_login_asks_only_the_keychain_that_holds_its_secret(catalog: Catalog, tmp_path: Path) -> None:
    """keyring is loaded for a stored secret only, and then only the backend class that holds it: finding
    the platform's backend (every backend module, D-Bus on Linux) is paid at login, not by each command.
    A login whose secret is in the file loads no keyring at all."""
    keychain = {"PYTHON_KEYRING_BACKEND": "tests.fakes.file_keyring.FileKeyring"}
    env = _clean_env(PDCAT_CONFIG_DIR=str(tmp_path / "config"), KEYRING_PROPERTY_PATH=str(tmp_path / "kc.json"))
    save = "from client.config import Credentials, store_login\n"
    save += f"store_login(Credentials({catalog.url!r}, 'tok-kc'), current=True)"
    _loaded_after(save, {**env, **keychain})
    loaded, _ = _loaded_after("from client.cli import main\nassert main(['ls']) == 0", env)  # no backend named
    assert "keyring" in _top_level(loaded) and "tests.fakes.file_keyring" in loaded
    probed = ("keyring.backends.SecretService", "keyring.backends.macOS", "keyring.backends.Windows",
              "keyring.backends.kwallet", "secretstorage", "jeepney")  # fmt: skip
    assert [m for m in loaded if m.startswith(probed)] == []
    assert catalog.seen[-1].headers["authorization"] == "Bearer tok-kc"

    _loaded_after(save.replace("tok-kc", "tok-file"), {**env, "PDCAT_KEYRING": "0"})
    loaded, _ = _loaded_after("from client.cli import main\nassert main(['ls']) == 0", env)
    assert "keyring" not in _top_level(loaded)
    assert catalog.seen[-1].headers["authorization"] == "Bearer tok-file"


# ---- the direct path asks what httpx asks ----------------------------------------------------------
def _through(catalog: Catalog, via_httpx: bool, **kwargs: Any) -> CatalogClient:
    """A client on ``catalog``: the direct path, or httpx (its own transport, over the same socket)."""
    transport = httpx.HTTPTransport() if via_httpx else None
    client = CatalogClient(catalog.url, transport=transport, **kwargs)
    assert type(client._sender).__name__ == ("_ViaHttpx" if via_httpx else "_Direct")
    return client


# headers either path may add on its own (framing and content negotiation), which the catalog never reads
_TRANSPORT_HEADERS = {"accept-encoding", "connection", "host"}


def _calls(api: CatalogClient) -> None:
    api.request("GET", "/catalog", params={"limit": 100, "tag": "a b&c", "architecture": "arm64", "cursor": None})
    api.versions("débian/12 x")
    api.delete("a", "1.0", "x86_64", purge=True)
    api.commit("u-1")
    api.pull("a", "1.0", "arm64")
    api.create_api_key(roles=["READER"], description="clé ünïcode", expires_in_days=7, flag=True)
    api.request("POST", "/admin/gc", json={"dry_run": False, "cursor": None, "grace_seconds": 1.5})
    api.request("GET", "/catalog", params={"purge": True, "many": ["x", "y"]})


@pytest.mark.parametrize("credentials", [{"token": "t0k"}, {"api_key": "pdk_1"}, {}], ids=["token", "key", "none"])
def test_both_paths_send_the_same_requests(catalog: Catalog, credentials: dict[str, str]) -> None:
    catalog.reply = lambda method, target: (200, {"items": []})
    sent: dict[bool, list[tuple[str, str, bytes, dict[str, str]]]] = {}
    for via_httpx in (False, True):
        catalog.seen.clear()
        with _through(catalog, via_httpx, **credentials) as api:
            _calls(api)
        sent[via_httpx] = [
            (s.method, s.target, s.body, {k: v for k, v in s.headers.items() if k not in _TRANSPORT_HEADERS})
            for s in catalog.seen
        ]
    assert sent[False] == sent[True]
    assert sent[False][0][1] == "/api/v1/catalog?limit=100&tag=a+b%26c&architecture=arm64&cursor="
    assert sent[False][1][1] == "/api/v1/catalog/d%C3%A9bian%2F12%20x"
    key_body = '{"roles":["READER"],"description":"clé ünïcode","expires_in_days":7,"flag":true}'
    assert sent[False][5][2].decode() == key_body  # compact UTF-8 JSON, as httpx writes it
    assert all(s.headers["host"] == catalog.url.removeprefix("http://") for s in catalog.seen)


@pytest.mark.parametrize("via_httpx", [False, True], ids=["direct", "httpx"])
def test_answers_read_the_same(catalog: Catalog, via_httpx: bool) -> None:
    answers = {
        "/api/v1/auth/whoami": (200, {"subject": "me"}),
        "/api/v1/uploads/u": (204, None),
        "/api/v1/catalog/gone": (404, {"error": {"code": "not_found", "message": "no such VM: gone"}}),
        "/api/v1/catalog/taken": (409, {"error": {"code": "conflict", "message": "already there"}}),
        "/api/v1/catalog/broken": (502, b"<html>bad gateway</html>"),
    }
    catalog.reply = lambda method, target: answers[target]
    with _through(catalog, via_httpx) as api:
        assert api.whoami() == {"subject": "me"}
        assert api.request("DELETE", "/uploads/u") is None
        with pytest.raises(NotFound, match=r"^no such VM: gone$"):
            api.versions("gone")
        with pytest.raises(Conflict, match=r"^already there$"):
            api.versions("taken")
        with pytest.raises(PdcatError, match=r"^the catalog answered HTTP 502$"):
            api.versions("broken")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("via_httpx", [False, True], ids=["direct", "httpx"])
def test_an_unreachable_catalog_is_reported_the_same(via_httpx: bool) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    transport = httpx.HTTPTransport() if via_httpx else None
    with CatalogClient(url, transport=transport) as api, pytest.raises(ConnectionFailed) as caught:
        api.whoami()
    assert caught.value.message.startswith(f"cannot reach the catalog at {url}: the connection failed. Is the")


@pytest.mark.parametrize("via_httpx", [False, True], ids=["direct", "httpx"])
def test_a_header_no_request_may_carry_is_refused_the_same(catalog: Catalog, via_httpx: bool) -> None:
    with _through(catalog, via_httpx, token="one\ntwo") as api, pytest.raises(ConnectionFailed) as caught:
        api.whoami()
    assert caught.value.message == f"cannot reach the catalog at {catalog.url}: " + _NO_ANSWER["LocalProtocolError"]
    assert catalog.seen == []


@pytest.mark.parametrize("via_httpx", [False, True], ids=["direct", "httpx"])
def test_a_silent_catalog_times_out_the_same(via_httpx: bool) -> None:
    with socket.socket() as listener:  # accepts (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        transport = httpx.HTTPTransport() if via_httpx else None
        with CatalogClient(url, transport=transport, timeout=0.3) as api, pytest.raises(ConnectionFailed) as caught:
            api.whoami()
    assert caught.value.message.startswith(f"the catalog at {url.rstrip('/')} did not answer in time.")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed, and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("via_httpx", [False, True], ids=["direct", "httpx"])
def test_tls_is_verified_the_same(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via_httpx: bool
) -> None:
    """Certifi's roots by default (a self-signed catalog is refused, saying what to do), ``SSL_CERT_FILE``
    instead when set, ``cacert`` on top of them (``pdcat login --cacert``, ``PDCAT_CACERT``), nothing
    with ``verify=False`` (a PDFile's INSECURE); HTTP/1.1 offered by ALPN."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(catalog))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    def client(verify: bool, cacert: str | None = None) -> CatalogClient:
        api = CatalogClient(url, verify=verify, cacert=cacert)
        if via_httpx:
            api._http  # noqa: B018 (from now on through httpx, with its own TLS context)
        return api

    try:
        with client(True) as api, pytest.raises(UntrustedServer) as caught:
            api.whoami()
        assert caught.value.message.startswith(f"the certificate of {url} is not trusted (self-signed certificate)")
        assert "pass --cacert FILE" in caught.value.message
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
        with client(False) as api:
            api.whoami()
        with client(True, cacert=str(cert)) as api:
            api.whoami()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with client(True) as api:
            api.whoami()
    finally:
        server.shutdown()
        server.server_close()
    assert len(catalog.seen) == 3


def test_a_connection_is_kept_alive_and_one_the_server_dropped_is_not_reused(catalog: Catalog) -> None:
    with CatalogClient(catalog.url) as api:
        api.whoami()
        api.whoami()
        assert catalog.seen[0].peer == catalog.seen[1].peer  # one connection, reused
        catalog.close_after_answer = True
        api.whoami()  # the server closes this one after answering...
        catalog.close_after_answer = False
        api.whoami()  # ...so the next call opens another, with no error
    assert len({s.peer for s in catalog.seen}) == 2


def _closed_after_the_check(catalog: Catalog, monkeypatch: pytest.MonkeyPatch, api: CatalogClient) -> None:
    """The race a kept-alive connection loses: the server closes it after answering, and the client's
    check before reusing it (``_dropped``) comes too early to see that (here: it never does)."""
    monkeypatch.setattr("client.api._dropped", lambda connection: False)
    api.whoami()
    catalog.close_after_answer = True
    api.whoami()  # answered, then closed by the server
    catalog.close_after_answer = False


def test_a_read_on_a_connection_closed_as_it_was_reused_is_sent_again(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CatalogClient(catalog.url) as api:
        _closed_after_the_check(catalog, monkeypatch, api)
        assert api.whoami() == {"items": [], "next_cursor": None}  # sent again, once, on a new connection
    assert len(catalog.seen) == 3
    assert len({s.peer for s in catalog.seen}) == 2


def test_a_read_sent_again_on_a_new_connection_that_breaks_too_says_the_catalog_is_unreachable(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CatalogClient(catalog.url) as api:
        _closed_after_the_check(catalog, monkeypatch, api)
        catalog.hang_up = True
        with pytest.raises(ConnectionFailed, match=r"cannot reach the catalog at .*without a valid answer"):
            api.whoami()
    assert len(catalog.seen) == 3  # the reused connection took nothing; the new one took it and hung up


def test_a_change_on_a_connection_closed_as_it_was_reused_is_not_sent_again(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CatalogClient(catalog.url) as api:
        _closed_after_the_check(catalog, monkeypatch, api)
        with pytest.raises(ConnectionFailed, match=r"without a valid answer|broke"):
            api.request("POST", "/catalog/x/1/x86_64/taint", json={})
        assert len(catalog.seen) == 2  # the server never took it, and it was not sent on another connection
        assert api.whoami() == {"items": [], "next_cursor": None}  # the next call opens a new connection


def test_calls_from_several_threads_share_the_pool(catalog: Catalog) -> None:
    catalog.reply = lambda method, target: (200, {"target": target})
    errors: list[BaseException] = []
    with CatalogClient(catalog.url) as api:

        def work(n: int) -> None:
            try:
                for i in range(20):
                    assert api.request("GET", f"/t/{n}/{i}") == {"target": f"/api/v1/t/{n}/{i}"}
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(catalog.seen) == 80


# ---- when httpx sends instead -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "env", "sender"),
    [
        ("http://127.0.0.1:8080", {}, "_Direct"),
        ("https://catalog.example.com/prefix/", {}, "_Direct"),
        ("http://127.0.0.1:8080", {"HTTPS_PROXY": "http://proxy:3128"}, "_ViaHttpx"),
        ("http://127.0.0.1:8080", {"all_proxy": "http://proxy:3128"}, "_ViaHttpx"),
        ("http://user:secret@127.0.0.1:8080", {}, "_ViaHttpx"),
        ("http://127.0.0.1:8080/?x=1", {}, "_ViaHttpx"),
        ("http://catalög.example.com", {}, "_ViaHttpx"),
        ("ftp://catalog.example.com", {}, "_ViaHttpx"),
    ],
)
def test_httpx_sends_whenever_the_direct_path_could_differ(
    monkeypatch: pytest.MonkeyPatch, url: str, env: dict[str, str], sender: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with CatalogClient(url) as api:
        assert type(api._sender).__name__ == sender


def test_asking_for_the_httpx_client_sends_through_it_from_then_on(catalog: Catalog) -> None:
    """A test hooks into ``_http`` (tests/contract/test_protocol_scale.py): every later call must go through it."""
    hooked: list[str] = []
    with CatalogClient(catalog.url, token="t") as api:
        api.whoami()
        api._http.event_hooks = {"request": [lambda request: hooked.append(request.url.path)]}
        api.whoami()
    assert hooked == ["/api/v1/auth/whoami"]
    assert [s.headers["authorization"] for s in catalog.seen] == ["Bearer t", "Bearer t"]


def test_a_transfer_never_loads_httpx_s_own_command_line() -> None:
    """httpx's package import would load click, rich and pygments for its CLI (~70 ms of every push)."""
    loaded, _ = _loaded_after("import client\nimport httpx\nassert callable(httpx.main)", _clean_env())
    assert "httpx" in loaded and "httpx._main" not in loaded
    assert not {"click", "pygments", "rich"} & _top_level(loaded)

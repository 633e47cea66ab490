"""The embedded server over TLS (``pdcat serve --tls-cert/--tls-key``): every limit of the plain server
still holds for TLS clients, a handshake has its own deadline, the peer's address reaches the app, and
plain HTTP to the TLS port is told to use https.

An in-process :class:`LocalServer` with deadlines short enough to watch and a certificate made in the
test by a CA of its own (trustme); the same limits of the plain server are proven in
``test_server_limits.py``, whose socket helpers these tests share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from client.blobio import BlobClient
from client.net import Trust, UntrustedServer
from core.local import server as server_module
from core.local.bootstrap import open_local_catalog
from core.local.server import CHUNK_PUT_LIMIT, LocalServer, WsgiApp
from core.local.tls import server_context
from core.storage_layout import staging_chunk_key
from tests.integration.test_server_limits import (
    _closed_by_server,
    _error_code,
    _head,
    _read_answer,
    _slow_clients_are_closed,
)
from tests.pki import Pki, write_pki

MiB = 1024 * 1024


@dataclass
class TlsServer:
    url: str
    address: tuple[str, int]
    pki: Pki
    app: WsgiApp

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca))

    def http(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.context(), timeout=30, **kw)  # type: ignore[arg-type]

    def connect(self, *, tls: bool = True) -> socket.socket:
        """A connection (its handshake done when ``tls``)."""
        sock = socket.create_connection(self.address, timeout=5)
        return self.context().wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock

    def signed(self, method: str, key: str) -> str:
        return self.app.catalog.blobs.presign(key, method, 300)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"), "127.0.0.1", "localhost")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> Iterator[TlsServer]:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 3.0)
    monkeypatch.setattr(server_module, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "HANDSHAKE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "MIN_BODY_RATE", 1024 * 1024)
    app = WsgiApp()
    server = LocalServer(app, "127.0.0.1", 0, threads=4, connection_limit=20, tls=server_context(pki.cert, pki.key))
    url = f"https://127.0.0.1:{server.port}"
    app.catalog = open_local_catalog(tmp_path / "data", url)
    server.start_background()
    try:
        yield TlsServer(url, ("127.0.0.1", server.port), pki, app)
    finally:
        server.close()
        app.catalog.close()


def _health_seconds(served: TlsServer) -> float:
    started = time.monotonic()
    with served.http() as client:
        assert client.get("/api/v1/health").status_code == 200
    return time.monotonic() - started


# ---- it serves ------------------------------------------------------------------------------------
def test_requests_and_large_bodies_round_trip(served: TlsServer) -> None:
    """Uploads and downloads of tens of MiB, and many requests on one kept-alive connection."""
    data = secrets.token_bytes(40 * MiB + 12345)
    key = staging_chunk_key(secrets.token_hex(8), "a" * 64)
    with served.http() as client:
        for _ in range(20):
            assert client.get("/api/v1/health").json() == {"status": "ok"}
        assert client.put(served.signed("PUT", key), content=data).status_code == 200
        got = client.get(served.signed("GET", key))
    assert got.status_code == 200 and got.content == data


def test_concurrent_connections_keep_their_bytes_apart(served: TlsServer) -> None:
    """Several TLS connections at once, each writing and reading its own objects (the server's task
    threads write while its main loop reads)."""
    failures: list[str] = []

    def worker(n: int) -> None:
        with served.http() as client:
            for i in range(6):
                body = secrets.token_bytes(MiB + n * 1000 + i)
                key = staging_chunk_key(secrets.token_hex(8), f"{n:x}{i:x}".ljust(64, "b"))
                if client.put(served.signed("PUT", key), content=body).status_code != 200:
                    failures.append(f"put {n}/{i}")
                elif client.get(served.signed("GET", key)).content != body:
                    failures.append(f"get {n}/{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_presigned_urls_are_reached_with_the_catalog_s_trust(served: TlsServer) -> None:
    """The blob client's two paths (http.client for GETs into a buffer, httpx for PUTs) trust what the
    catalog client trusts; a certificate they do not trust is final at once, never retried."""
    key = staging_chunk_key(secrets.token_hex(8), "d" * 64)
    data = secrets.token_bytes(3 * MiB)
    trusted = BlobClient(trust=Trust(cacert=str(served.pki.ca)), retries=0)
    try:
        trusted.put(served.signed("PUT", key), data, "a chunk")
        into = memoryview(bytearray(4 * MiB))
        assert into[: trusted.get_into(served.signed("GET", key), "a chunk", into)] == data
    finally:
        trusted.close()
    untrusted = BlobClient(retries=3, backoff=5.0)  # a retry would wait seconds
    try:
        started = time.monotonic()
        with pytest.raises(UntrustedServer, match=r"the certificate of https://127\.0\.0\.1:\d+ is not trusted"):
            untrusted.get_into(served.signed("GET", key), "a chunk", memoryview(bytearray(4 * MiB)))
        with pytest.raises(UntrustedServer):
            untrusted.put(served.signed("PUT", key), data, "a chunk")
        assert time.monotonic() - started < 2.0
    finally:
        untrusted.close()


def test_the_app_sees_the_peer_address(served: TlsServer, caplog: pytest.LogCaptureFixture) -> None:
    """REMOTE_ADDR is the client's, not a terminator's (the login throttle and the logs use it)."""
    caplog.set_level(logging.INFO, logger="pdcat.http")
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=served.context())
    with httpx.Client(base_url=served.url, transport=transport) as client:
        assert client.get("/api/v1/health").status_code == 200
    clients = [getattr(r, "client", None) for r in caplog.records if r.getMessage() == "request"]
    assert clients == ["127.0.0.2"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_spoken(served: TlsServer, version: ssl.TLSVersion) -> None:
    context = served.context()
    context.minimum_version = context.maximum_version = version
    with served.http() as client:
        client._transport = httpx.HTTPTransport(verify=context)
        assert client.get("/api/v1/health").status_code == 200


def test_older_tls_is_refused(served: TlsServer) -> None:
    context = served.context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(served.address, timeout=5) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert _health_seconds(served) < 2.0


# ---- plain HTTP on the TLS port -------------------------------------------------------------------
def test_plain_http_is_told_to_use_https(served: TlsServer) -> None:
    plain = served.url.replace("https://", "http://")
    r = httpx.get(plain + "/api/v1/health", timeout=5)
    assert r.status_code == 400 and "use https://" in r.json()["error"]["message"]
    # a client that sends its whole body before reading still reads the answer (the server lingers)
    r = httpx.post(plain + "/api/v1/auth/token", content=b"x" * (4 * MiB), timeout=10)
    assert (r.status_code, _error_code(r.content)) == (400, "invalid_input")
    assert _health_seconds(served) < 2.0


# ---- the plain server's limits, over TLS ---------------------------------------------------------------
def _client_hello(context: ssl.SSLContext) -> bytes:
    """The first message a real client sends."""
    hello = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    return outgoing.read()


def test_a_handshake_that_does_not_finish_is_closed(served: TlsServer) -> None:
    silent = served.connect(tls=False)  # connects, says nothing
    trickle = served.connect(tls=False)  # sends a real ClientHello, a byte at a time
    hello = iter(_client_hello(served.context()))
    try:
        deadline = time.monotonic() + 2.5  # HANDSHAKE_TIMEOUT_S, plus the cleanup interval; idle is 3 s
        while time.monotonic() < deadline and not _closed_by_server(trickle, 0.01):
            trickle.sendall(bytes([next(hello)]))
            time.sleep(0.1)
        assert _closed_by_server(trickle, 0.5), "a trickled handshake was kept past HANDSHAKE_TIMEOUT_S"
        assert _closed_by_server(silent, 0.5), "a connection with no handshake was kept past HANDSHAKE_TIMEOUT_S"
    finally:
        silent.close()
        trickle.close()


def test_idle_trickling_and_stalled_tls_connections_are_closed(served: TlsServer) -> None:
    _slow_clients_are_closed(served.connect, window=6, grace=0.5, kind="TLS ")


def test_at_the_connection_limit_idle_tls_connections_make_room(served: TlsServer) -> None:
    """Idle connections, handshaken or not, are evicted for new ones: /health still answers."""
    socks = [served.connect(tls=i % 2 == 0) for i in range(60)]
    try:
        for _ in range(3):
            assert _health_seconds(served) < 2.0
        assert _closed_by_server(socks[0], 2.0)  # the oldest made room
    finally:
        for sock in socks:
            sock.close()


def test_an_oversized_body_is_refused_from_its_head(served: TlsServer) -> None:
    with served.connect() as sock:
        sock.sendall(_head("POST", "/api/v1/auth/token", {"Content-Length": str(100 * MiB)}))
        status, headers, body = _read_answer(sock)
    assert (status, _error_code(body), headers.get("connection")) == (413, "payload_too_large", "close")

    path = urlsplit(served.signed("PUT", staging_chunk_key(secrets.token_hex(8), "c" * 64)))
    with served.connect() as sock:
        sock.sendall(_head("PUT", f"{path.path}?{path.query}", {"Content-Length": str(CHUNK_PUT_LIMIT + 1)}))
        status, _, body = _read_answer(sock)
    assert (status, _error_code(body)) == (413, "payload_too_large")


def test_the_answer_to_a_refused_body_reaches_a_client_that_sends_it_all(served: TlsServer) -> None:
    with served.http() as client:
        r = client.post("/api/v1/auth/token", content=b"x" * (8 * MiB))
    assert (r.status_code, json.loads(r.content)["error"]["code"]) == (413, "payload_too_large")

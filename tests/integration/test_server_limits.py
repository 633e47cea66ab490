"""The embedded server cannot be stalled or made to buffer what it will refuse (``pdcat serve``).

Against a real ``pdcat serve`` (a child process, whose memory is read from ``/proc``) and, where a
test shortens the server's deadlines or its connection limit, an in-process :class:`LocalServer`.
Every refusal here is answered from the request's head: the test sends the head and reads the answer
before it sends (most of) the body, so a server that waited for the body fails by timing out.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from core.api import route_shapes
from core.http import MAX_BODY
from core.local import server as server_module
from core.local.bootstrap import open_local_catalog
from core.local.file_blobs import FileBlobStore
from core.local.server import (
    CHUNK_PUT_LIMIT,
    CONNECTION_LIMIT,
    INDEX_PUT_LIMIT,
    MAX_REQUEST_BODY,
    LocalServer,
    WsgiApp,
    blob_put_limit,
)
from core.storage_layout import staging_chunk_key, staging_index_key
from infra.local.servers import RunningServer, start_embedded

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's memory in /proc")

MiB = 1024 * 1024
TWO_GIB = 2 * 1024 * MiB


# ---- helpers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_embedded(tmp_path_factory.mktemp("limits") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own, for a test that reads the peak memory of the process."""
    server = start_embedded(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: pdcat.test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_answer(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer (status, headers, body), read until its Content-Length or the server closes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        block = sock.recv(65536)
        if not block:
            break
        data += block
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "-1"))
    while len(body) < want:
        block = sock.recv(65536)
        if not block:
            break
        body += block
    return int(lines[0].split()[1]), headers, body


def _ask_head_only(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Send a request's head and no body byte; the answer must come anyway (a refusal)."""
    with socket.create_connection(_address(url), timeout=5) as sock:
        sock.sendall(_head(method, target, headers))
        return _read_answer(sock)


def _error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


def _signed_put(server: RunningServer, key: str) -> str:
    """A presigned PUT URL for ``key``, signed with the server's own key (as the API would sign it)."""
    signing_key = bytes.fromhex((server.data_dir / "blob-signing-key").read_text().strip())
    store = FileBlobStore(server.data_dir / "blobs", server.url, signing_key)
    url = store.presign(key, "PUT", 300)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _health_seconds(url: str) -> float:
    started = time.monotonic()
    r = httpx.get(url + "/api/v1/health", timeout=10)
    assert r.status_code == 200
    return time.monotonic() - started


@contextlib.contextmanager
def _idle_sockets(url: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` half-open connections: half send nothing, half only the start of a header."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.create_connection(_address(url), timeout=5)
            socks.append(sock)
            if i % 2:
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: pdcat.test\r\n")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.fixture
def open_files_for(request: pytest.FixtureRequest) -> None:
    """Room for this test's sockets in this process's own open-files limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * CONNECTION_LIMIT + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the open-files hard limit {hard} is below the {wanted} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        request.addfinalizer(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


# ---- idle and half-open connections ----------------------------------------------------------------
def test_150_half_open_connections_do_not_stall_health(served: RunningServer) -> None:
    with _idle_sockets(served.url, 150):
        assert _health_seconds(served.url) < 2.0


def test_more_idle_connections_than_the_limit_do_not_stall_health(served: RunningServer, open_files_for: None) -> None:
    """Past the connection limit the longest-idle connections make room, so /health still answers."""
    with _idle_sockets(served.url, CONNECTION_LIMIT + 100) as socks:
        assert _health_seconds(served.url) < 2.0
        assert _health_seconds(served.url) < 2.0
        # the oldest idle sockets were the ones closed
        assert _closed_by_server(socks[0], 2.0)


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An in-process server with deadlines short enough to watch."""
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "HEADER_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "MIN_BODY_RATE", 1024 * 1024)
    app = WsgiApp()
    server = LocalServer(app, "127.0.0.1", 0, threads=4, connection_limit=20)
    url = f"http://127.0.0.1:{server.port}"
    app.catalog = open_local_catalog(tmp_path / "data", url)
    server.start_background()
    try:
        yield url
    finally:
        server.close()
        app.catalog.close()


def _slow_clients_are_closed(connect: Callable[[], socket.socket], *, window: float, grace: float, kind: str) -> None:
    """An idle connection, a header trickled a byte at a time (slowloris) and a body far slower than
    MIN_BODY_RATE are each closed by the server within ``window`` seconds (``grace`` more to see the
    last two go). ``kind`` names the connections in the failure messages."""
    idle, trickle, slow_body = connect(), connect(), connect()
    slow_body.sendall(_head("POST", "/api/v1/auth/token", {"Content-Length": "1000000"}) + b"{")
    try:
        deadline = time.monotonic() + window
        while time.monotonic() < deadline and not _closed_by_server(idle, 0.01):
            with contextlib.suppress(OSError):  # the server may close either first: checked below
                trickle.sendall(b"X")  # a header that never ends, one byte at a time (slowloris)
                slow_body.sendall(b" ")  # a body far slower than MIN_BODY_RATE
            time.sleep(0.1)
        assert _closed_by_server(idle, 0.5), f"an idle {kind}connection was kept past IDLE_TIMEOUT_S"
        assert _closed_by_server(trickle, grace), f"a trickled {kind}header was kept past HEADER_TIMEOUT_S"
        assert _closed_by_server(slow_body, grace), f"a {kind}body slower than MIN_BODY_RATE was kept"
    finally:
        for sock in (idle, trickle, slow_body):
            sock.close()


def test_idle_trickling_and_stalled_connections_are_closed(in_process: str) -> None:
    _slow_clients_are_closed(lambda: socket.create_connection(_address(in_process)), window=4, grace=2.0, kind="")


def test_at_the_connection_limit_idle_connections_make_room(in_process: str) -> None:
    with _idle_sockets(in_process, 60):
        for _ in range(3):
            assert _health_seconds(in_process) < 2.0


def test_a_connection_in_a_request_is_not_evicted(in_process: str) -> None:
    """Only connections waiting for a header are closed to make room, never a body on its way."""
    busy = socket.create_connection(_address(in_process))
    busy.sendall(_head("POST", "/api/v1/auth/token", {"Content-Length": "10"}) + b"{")
    try:
        with _idle_sockets(in_process, 60):
            assert _health_seconds(in_process) < 2.0
            busy.sendall(b'"a": 1}   ')
            status, _, body = _read_answer(busy)
            assert status == 400 or status == 401, body
    finally:
        busy.close()


# ---- bodies ---------------------------------------------------------------------------------------
def test_100_mib_posts_are_refused_without_being_buffered(fresh: RunningServer) -> None:
    """Three unauthenticated 100 MiB POSTs: 413 each, and the server's peak memory barely moves."""
    pid = fresh.process.pid
    peak_before = _status_kib(pid, "VmHWM")
    answers: list[int] = []

    def post() -> None:
        body = b"x" * (100 * MiB)
        r = httpx.post(fresh.url + "/api/v1/auth/token", content=body, timeout=30)
        answers.append(r.status_code)
        assert _error_code(r.content) == "payload_too_large"

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [413, 413, 413]
    grew = (_status_kib(pid, "VmHWM") - peak_before) // 1024
    assert grew < 24, f"the server's peak memory grew by {grew} MiB"
    assert _status_kib(pid, "VmRSS") // 1024 < 120
    assert _health_seconds(fresh.url) < 2.0


def test_the_answer_to_a_refused_body_reaches_a_client_that_sends_it_all(served: RunningServer) -> None:
    """The server reads and drops the rest of a refused body for a moment, so a client that sends its
    whole body before reading (most do) gets the 413 rather than a connection reset."""
    for size in (MAX_BODY + 1, 8 * MiB):
        r = httpx.post(served.url + "/api/v1/auth/token", content=b"x" * size, timeout=30)
        assert (r.status_code, _error_code(r.content)) == (413, "payload_too_large")


def test_a_chunked_body_past_the_api_cap_is_cut_off(served: RunningServer) -> None:
    """No Content-Length to check: the bytes are counted as they come and the request is cut off
    past 1 MiB, answered before the client has finished (or ended) its body."""
    with socket.create_connection(_address(served.url), timeout=5) as sock:
        sock.sendall(_head("POST", "/api/v1/auth/token", {"Transfer-Encoding": "chunked"}))
        piece = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 8 * MiB:  # never terminated: a server waiting for the end would hang
                sock.sendall(piece)
                sent += 64 * 1024
        status, _, body = _read_answer(sock)
    assert (status, _error_code(body)) == (413, "payload_too_large")
    assert _health_seconds(served.url) < 2.0


def test_a_chunked_blob_upload_past_the_chunk_cap_is_cut_off(served: RunningServer) -> None:
    target = _signed_put(served, staging_chunk_key(secrets.token_hex(8), "a" * 64))
    with socket.create_connection(_address(served.url), timeout=10) as sock:
        sock.sendall(_head("PUT", target, {"Transfer-Encoding": "chunked"}))
        block = 1 * MiB
        piece = b"%x\r\n%s\r\n" % (block, b"\0" * block)
        sent = 0
        with contextlib.suppress(OSError):
            while sent <= CHUNK_PUT_LIMIT + 16 * MiB:
                sock.sendall(piece)
                sent += block
        status, _, body = _read_answer(sock, timeout=10)
    assert (status, _error_code(body)) == (413, "payload_too_large")


@pytest.mark.parametrize("length", [MAX_BODY + 1, 100 * MiB, TWO_GIB - 1, TWO_GIB, 2**62])
def test_an_oversized_content_length_is_refused_on_every_api_route_without_reading(
    served: RunningServer, length: int
) -> None:
    for pattern, methods in route_shapes().items():
        path = pattern.replace("{", "").replace("}", "")  # every parameter filled with its own name
        for method in methods:
            status, headers, body = _ask_head_only(
                served.url, method, path, {"Content-Length": str(length), "Content-Type": "application/json"}
            )
            assert (status, _error_code(body)) == (413, "payload_too_large"), (method, path)
            assert headers.get("connection") == "close"


def test_blob_uploads_are_capped_per_key_before_reading(served: RunningServer) -> None:
    nonce = secrets.token_hex(8)
    chunk = _signed_put(served, staging_chunk_key(nonce, "b" * 64))
    index = _signed_put(served, staging_index_key(nonce))
    assert blob_put_limit(staging_index_key(nonce)) == INDEX_PUT_LIMIT
    assert max(CHUNK_PUT_LIMIT, INDEX_PUT_LIMIT, MAX_BODY) == MAX_REQUEST_BODY < TWO_GIB
    for target, limit in ((chunk, CHUNK_PUT_LIMIT), (index, INDEX_PUT_LIMIT)):
        for length in (limit + 1, TWO_GIB - 1, TWO_GIB):
            status, _, body = _ask_head_only(served.url, "PUT", target, {"Content-Length": str(length)})
            assert (status, _error_code(body)) == (413, "payload_too_large"), (target, length)


def test_an_unsigned_blob_upload_is_refused_before_its_body(served: RunningServer) -> None:
    """Even within the cap, a PUT whose URL is not validly signed is refused from its head: an
    unauthenticated body is never buffered."""
    good = _signed_put(served, staging_chunk_key(secrets.token_hex(8), "c" * 64))
    forged = good[: -len("0" * 8)] + "0" * 8
    for target, code in ((forged, "forbidden"), (good.replace("method=PUT", "method=GET"), "forbidden")):
        status, _, body = _ask_head_only(served.url, "PUT", target, {"Content-Length": str(CHUNK_PUT_LIMIT)})
        assert (status, _error_code(body)) == (403, code)


def test_a_blob_upload_within_its_cap_still_works(served: RunningServer) -> None:
    key = staging_chunk_key(secrets.token_hex(8), "d" * 64)
    data = secrets.token_bytes(3 * MiB)
    r = httpx.put(served.url + _signed_put(served, key), content=data, timeout=30)
    assert r.status_code == 200, r.text
    stored = served.data_dir / "blobs" / "objects" / Path(*key.split("/"))
    assert stored.read_bytes() == data


def _spool_files(server: RunningServer) -> list[str]:
    return [n for n in os.listdir(server.data_dir / "blobs" / "tmp") if n.startswith("body-")]


def test_a_blob_upload_is_stored_by_renaming_its_spooled_body(served: RunningServer) -> None:
    """A body past waitress's memory buffer is spooled into the store's temp folder and becomes the
    object by a rename: same bytes, and no spool file left behind (ADR 002's staging area)."""
    for size in (300 * 1024, 3 * MiB):  # both past inbuf_overflow
        key = staging_chunk_key(secrets.token_hex(8), secrets.token_hex(32))
        data = secrets.token_bytes(size)
        r = httpx.put(served.url + _signed_put(served, key), content=data, timeout=30)
        assert r.status_code == 200, r.text
        assert (served.data_dir / "blobs" / "objects" / Path(*key.split("/"))).read_bytes() == data
    assert _spool_files(served) == []


def test_an_upload_cut_off_mid_body_leaves_no_spool_file(served: RunningServer) -> None:
    key = staging_chunk_key(secrets.token_hex(8), secrets.token_hex(32))
    target = _signed_put(served, key)
    with socket.create_connection(_address(served.url), timeout=5) as sock:
        sock.sendall(_head("PUT", target, {"Content-Length": str(3 * MiB)}) + bytes(MiB))
        deadline = time.monotonic() + 5
        while not _spool_files(served) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _spool_files(served), "the body was not spooled into the store's temp folder"
    deadline = time.monotonic() + 10
    while _spool_files(served) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _spool_files(served) == []
    assert not (served.data_dir / "blobs" / "objects" / Path(*key.split("/"))).exists()

"""The local harnesses refuse what the clouds refuse: API Gateway's and Lambda's payload limits and
timeout in front of the AWS frontend, the Functions host's request size in front of the Azure one.

Each refusal must come from the harness (API Gateway's own JSON, the host's bare 413), not from pdcat,
so these tests check the answer's body too. The numbers live in ``core/limits.py``.
"""

from __future__ import annotations

import json
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chalice.config import Config

from core.limits import APIGW_BODY_BYTES, FUNCTIONS_REQUEST_BYTES, LAMBDA_PAYLOAD_BYTES
from infra.local.apigw_limits import TIMEOUT_ENV, GatewayTimeoutError, LimitedLocalGateway
from infra.local.servers import RunningProcess, start_chalice_local
from tests.aws_inprocess import ChaliceTransport
from tests.backend_names import BACKENDS
from tests.contract.helpers import RawResponse, raw_request

AWS = [name for name in ("aws-http", "aws-inproc") if name in BACKENDS]
AZURE = [name for name in ("azure-http", "azure-inproc") if name in BACKENDS]
MB = 1024 * 1024
APIGW_TOO_LARGE = {"message": "Request Too Long"}
LAMBDA_FAILED = {"message": "Internal server error"}
TIMED_OUT = {"message": "Endpoint request timed out"}


def _json_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes, for an API route that takes one."""
    head, tail = b'{"role":"USER","days":1,"pad":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def _post_api_key(backend, size: int) -> RawResponse:
    headers = {
        "Authorization": f"Bearer {backend.token('root', roles=['SUPER_USER'])}",
        "Content-Type": "application/json",
    }
    return backend.raw("POST", "/api/v1/auth/api-keys", headers=headers, body=_json_body(size))


def _json(r: RawResponse) -> object:
    try:
        return r.json()
    except ValueError:
        return r.content[:200]


# --- the request side, against the real backends ----------------------------------------------------


@pytest.mark.parametrize("name", AWS)
@pytest.mark.parametrize(
    "size", [LAMBDA_PAYLOAD_BYTES + 1, 7 * MB, APIGW_BODY_BYTES + 1, 11 * MB], ids=["6MB+1", "7MB", "10MB+1", "11MB"]
)
def test_aws_refuses_a_request_over_the_lambda_or_api_gateway_payload(started_backends, name, size) -> None:
    r = _post_api_key(started_backends(name), size)
    assert (r.status_code, _json(r)) == (413, APIGW_TOO_LARGE)


@pytest.mark.parametrize("name", AWS)
def test_aws_passes_a_request_under_the_lambda_payload_to_the_app(started_backends, name) -> None:
    # the event adds headers, path and context to the body: a few KiB under the cap still fits
    r = _post_api_key(started_backends(name), LAMBDA_PAYLOAD_BYTES - 16 * 1024)
    assert _json(r) != APIGW_TOO_LARGE, r.status_code
    assert r.status_code < 500, (r.status_code, r.content[:300])


@pytest.mark.parametrize("name", AZURE)
def test_azure_host_refuses_a_request_over_100_mb_before_the_app(started_backends, name) -> None:
    backend = started_backends(name)
    if backend.transport is not None:
        r = _post_api_key(backend, 101 * MB)
    else:
        # the host answers 413 from the head and closes: a client that sends the whole body first (as
        # Backend.raw does) gets a broken pipe instead, so this one watches for the early answer, as curl does
        body = _json_body(101 * MB)
        r, sent = _send_until_answered(backend.url, "/api/v1/auth/api-keys", body)
        assert sent < len(body), "the host read the whole body before refusing it"
    assert r.status_code == 413
    assert b"payload_too_large" not in r.content  # the host's refusal, not pdcat's


@pytest.mark.parametrize("name", AZURE)
def test_azure_host_refuses_from_the_content_length_alone(started_backends, name) -> None:
    """The announced length is enough: the host answers before reading (here: sending) any body."""
    backend = started_backends(name)
    headers = {"Content-Length": str(FUNCTIONS_REQUEST_BYTES + 1), "Content-Type": "application/json"}
    if backend.transport is not None:
        r = backend.transport.raw("POST", "/api/v1/auth/api-keys", headers, b"")
    else:
        r = _send_head_only(backend.url, "/api/v1/auth/api-keys", headers)
    assert r.status_code == 413


def _send_until_answered(url: str, path: str, body: bytes) -> tuple[RawResponse, int]:
    """POST ``body`` in pieces, stopping as soon as the server answers (or resets); the answer and
    how many body bytes were sent."""
    import http.client
    import select
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
        view, sent = memoryview(body), 0
        try:
            while sent < len(body) and not select.select([sock], [], [], 0)[0]:
                sent += sock.send(view[sent : sent + 256 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: its answer is still there to read
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()), sent
    finally:
        sock.close()


def _send_head_only(url: str, path: str, headers: dict[str, str]) -> RawResponse:
    """A request whose head announces a body that never comes: only an early refusal answers it."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


# --- the response side and the timeout, on a tiny Chalice app under the same harnesses -----------------

TINY_APP = """
import time
from chalice import Chalice, Response

app = Chalice(app_name="tiny")
LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024


@app.route("/api/v1/health")
def health():
    return {"ok": True}


@app.route("/fits")
def fits():
    return Response(body="x" * (LAMBDA_PAYLOAD_BYTES - 4096), headers={"Content-Type": "text/plain"})


@app.route("/too-big")
def too_big():
    return Response(body="x" * (LAMBDA_PAYLOAD_BYTES + 1), headers={"Content-Type": "text/plain"})


@app.route("/binary")
def binary():
    # 5 MB of bytes are ~6.7 MB once base64-encoded into the response object: over the cap
    return Response(body=b"\\x01" * (5 * 1024 * 1024), headers={"Content-Type": "application/octet-stream"})


@app.route("/slow")
def slow():
    time.sleep(1.0)
    return {"late": True}
"""


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-chalice")
    (root / "app.py").write_text(TINY_APP)
    (root / ".chalice").mkdir()
    config = {"version": "2.0", "app_name": "tiny", "stages": {"dev": {"api_gateway_stage": "api"}}}
    (root / ".chalice" / "config.json").write_text(json.dumps(config))
    return root


def _tiny_app() -> object:
    module = types.ModuleType("tiny_app")
    exec(compile(TINY_APP, "tiny_app.py", "exec"), module.__dict__)
    return module.app


@pytest.fixture(scope="module")
def tiny_http(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    """The tiny app under the same ``chalice local`` launcher as aws-http, with a 0.3 s timeout."""
    server = start_chalice_local({TIMEOUT_ENV: "0.3"}, tmp_path_factory.mktemp("tiny-logs"), project_dir=tiny_project)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_inproc(tiny_project: Path) -> Iterator[ChaliceTransport]:
    transport = ChaliceTransport(app=_tiny_app(), project_dir=tiny_project)
    try:
        yield transport
    finally:
        transport.close()


@pytest.fixture(params=["http", "inproc"])
def tiny_get(request: pytest.FixtureRequest) -> Callable[[str], RawResponse]:
    accept = {"Accept": "application/octet-stream"}  # Chalice serves a binary body only to who accepts it
    if request.param == "http":
        server = request.getfixturevalue("tiny_http")
        return lambda path: raw_request(server.url, "GET", path, headers=accept, timeout=30)
    transport = request.getfixturevalue("tiny_inproc")
    return lambda path: transport.raw("GET", path, accept, b"")


def test_a_response_under_the_lambda_payload_is_served(tiny_get) -> None:
    r = tiny_get("/fits")
    assert (r.status_code, len(r.content)) == (200, LAMBDA_PAYLOAD_BYTES - 4096)


@pytest.mark.parametrize("path", ["/too-big", "/binary"])
def test_a_response_over_the_lambda_payload_is_a_502(tiny_get, path) -> None:
    r = tiny_get(path)
    assert (r.status_code, _json(r)) == (502, LAMBDA_FAILED)


def test_a_slow_answer_is_a_504_over_http(tiny_http: RunningProcess) -> None:
    started = time.monotonic()
    r = raw_request(tiny_http.url, "GET", "/slow", timeout=30)
    assert (r.status_code, _json(r)) == (504, TIMED_OUT)
    assert time.monotonic() - started < 0.9  # answered at the timeout, not when the function finished


def test_a_slow_answer_is_a_504_in_process() -> None:
    gateway = LimitedLocalGateway(_tiny_app(), Config(), timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError) as caught:
        gateway.handle_request("GET", "/slow", {}, b"")
    assert time.monotonic() - started < 0.8
    assert json.loads(caught.value.body or b"") == TIMED_OUT
    # the invocation goes on, as Lambda's does; this one-container gateway serves the next request after it
    gateway.timeout_s = 5.0
    assert gateway.handle_request("GET", "/api/v1/health", {}, b"")["statusCode"] == 200
    assert time.monotonic() - started >= 0.95

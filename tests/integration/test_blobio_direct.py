"""PUTs through the standard library's ``http.client`` (``client.blobio._Direct``): the object and the
catalog's PUT headers arrive exactly, a kept-alive connection the server closed meanwhile is retried
once on a new one (without the retry policy), and an error answer is final for that attempt."""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from client.blobio import BlobClient
from core.errors import PdcatError
from tests.loopback_http import serving


class _Storage(BaseHTTPRequestHandler):
    """Keeps every PUT; with ``hang_up`` set it closes each connection after answering, without saying
    so (an idle timeout that lands between two requests)."""

    protocol_version = "HTTP/1.1"
    stored: dict[str, tuple[bytes, str | None]] = {}
    connections: set[tuple[str, int]] = set()
    hang_up = False

    def do_PUT(self) -> None:
        type(self).connections.add(self.client_address)
        if self.path.endswith("/expired"):  # refused from the headers, the body never read (S3)
            answer = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(answer)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer)
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/refused"):
            answer = b"<Error><Code>AccessDenied</Code></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        type(self).stored[self.path] = (body, self.headers.get("x-ms-blob-type"))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if type(self).hang_up:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def storage() -> Iterator[str]:
    _Storage.stored, _Storage.connections, _Storage.hang_up = {}, set(), False
    with serving(_Storage) as base:
        yield f"{base}/bucket"


def test_objects_arrive_whole_on_one_kept_alive_connection(storage: str) -> None:
    client = BlobClient(retries=0)
    objects = {f"/bucket/c{i}": os.urandom(3 * 1024 * 1024 + i) for i in range(4)}
    try:
        assert client._direct is not None  # no proxy configured here: the direct path is the one used
        for path, data in objects.items():
            client.put(storage.removesuffix("/bucket") + path, data, "chunk", {"x-ms-blob-type": "BlockBlob"})
    finally:
        client.close()
    assert _Storage.stored == {path: (data, "BlockBlob") for path, data in objects.items()}
    assert len(_Storage.connections) == 1


def test_a_connection_closed_between_puts_is_retried_once_on_a_new_one(storage: str) -> None:
    _Storage.hang_up = True
    client = BlobClient(retries=0)  # no retry policy: only the stale-connection retry can save it
    try:
        for i in range(3):
            client.put(f"{storage}/c{i}", b"x" * (i + 1), "chunk")
    finally:
        client.close()
    assert {p: body for p, (body, _) in _Storage.stored.items()} == {f"/bucket/c{i}": b"x" * (i + 1) for i in range(3)}


def test_an_error_answer_is_the_storage_error(storage: str) -> None:
    client = BlobClient(retries=0)
    try:
        with pytest.raises(PdcatError, match="403"):
            client.put(f"{storage}/refused", b"data", "chunk abc")
        client.put(f"{storage}/after", b"data", "chunk abc")
    finally:
        client.close()
    assert _Storage.stored["/bucket/after"][0] == b"data"
    assert len(_Storage.connections) == 2  # the refused answer's connection was not reused


def test_a_url_refused_before_the_body_is_read_is_refreshed_not_retried(storage: str) -> None:
    """Storage that answers 403 from the headers and closes while the client still sends 8 MiB: the
    push sees the refusal (and asks for a fresh URL), not a broken pipe it would retry as it is."""
    client = BlobClient(retries=2, backoff=0)
    fresh: list[str] = []

    def refresh() -> str:
        fresh.append("asked")
        return f"{storage}/c-fresh"

    data = os.urandom(8 * 1024 * 1024)
    try:
        client.put(f"{storage}/expired", data, "chunk abc", refresh=refresh)
    finally:
        client.close()
    assert fresh == ["asked"]
    assert _Storage.stored == {"/bucket/c-fresh": (data, None)}

"""Storage that answers a redirect (S3's 307 for a bucket outside us-east-1 reached through the global
endpoint) is an error: an upload was not stored and a redirect page is never chunk data."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from client.blobio import BlobClient
from core.errors import PdcatError
from tests.loopback_http import serving


class _Redirecting(BaseHTTPRequestHandler):
    def _redirect(self) -> None:
        body = b"<Error><Code>TemporaryRedirect</Code></Error>"
        self.send_response(307)
        self.send_header("Location", "https://bucket.s3.eu-west-1.amazonaws.com/x")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._redirect()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._redirect()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting_url() -> Iterator[str]:
    with serving(_Redirecting) as base:
        yield f"{base}/bucket/chunk"


@pytest.mark.parametrize("method", ["get", "put"])
def test_a_redirect_from_storage_is_an_error_never_data(redirecting_url: str, method: str) -> None:
    client = BlobClient(retries=0)
    try:
        with pytest.raises(PdcatError, match=r"HTTP 307 \(a redirect to https://bucket\.s3\.eu-west-1"):
            if method == "get":
                client.get(redirecting_url, "chunk abc")
            else:
                client.put(redirecting_url, b"data", "chunk abc")
    finally:
        client.close()

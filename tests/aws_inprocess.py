"""The AWS frontend in-process: ``chalice.test.Client`` behind an httpx transport.

The contract suite talks httpx; with this transport its requests go through Chalice's own local API
Gateway emulation into the unchanged ``aws_app/app.py``, with no socket in between. Like a Lambda
container, the app handles one request at a time (``app.current_request`` is a single attribute),
so the transport serialises calls; concurrency tests still race each other's writes in DynamoDB.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import httpx

from infra.local.servers import REPO
from tests.contract.helpers import RawResponse

__all__ = ["ChaliceTransport"]


class ChaliceTransport(httpx.BaseTransport):
    """Hands each httpx request, path bytes unchanged, to ``chalice.test.Client``."""

    def __init__(self) -> None:
        from chalice.test import Client

        app_dir = REPO / "aws_app"
        if str(app_dir) not in sys.path:
            sys.path.insert(0, str(app_dir))
        import app as chalice_app  # aws_app/app.py, exactly as Lambda imports it

        chalice_app.router.cache_clear()  # built on first request from the environment set by the fixture
        self._client: Any = Client(chalice_app.app, stage_name="dev", project_dir=str(app_dir))
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        answer = self.raw(request.method, request.url.raw_path.decode("ascii"), headers, request.read())
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content, request=request)

    def raw(self, method: str, path: str, headers: dict[str, str], body: bytes) -> RawResponse:
        """The path exactly as given (httpx would remove dot segments), as an attacker would send it."""
        with self._lock:
            answer = self._client.http.request(method, path, headers=headers, body=body)
        return RawResponse(answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.body)

    def close(self) -> None:
        self._client.__exit__(None, None, None)

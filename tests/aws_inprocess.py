"""The AWS frontend in-process: ``chalice.test.Client`` behind an httpx transport.

The contract suite talks httpx; with this transport its requests go through Chalice's own local API
Gateway emulation into the unchanged ``aws_app/app.py``, with no socket in between. Like a Lambda
container, the app handles one request at a time (``app.current_request`` is a single attribute),
so the transport serialises calls; concurrency tests still race each other's writes in DynamoDB.
The gateway is ``LimitedLocalGateway`` (``infra/local/apigw_limits.py``), as under ``chalice local``: a
request or response the cloud would refuse (10 MB, Lambda's 6 MB payload, 29 s) is refused here too.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from infra.local.apigw_limits import LimitedLocalGateway
from infra.local.servers import REPO
from tests.contract.helpers import RawResponse

__all__ = ["ChaliceTransport"]


class ChaliceTransport(httpx.BaseTransport):
    """Hands each httpx request, path bytes unchanged, to ``chalice.test.Client``."""

    def __init__(self, app: Any = None, project_dir: Path | None = None) -> None:
        """``app``/``project_dir``: another Chalice app (the harness's own tests); default aws_app/app.py."""
        from chalice.local import LocalGateway
        from chalice.test import Client

        app_dir = project_dir or REPO / "aws_app"
        if app is None:
            if str(app_dir) not in sys.path:
                sys.path.insert(0, str(app_dir))
            import app as chalice_app  # aws_app/app.py, exactly as Lambda imports it

            chalice_app.router.cache_clear()  # built on first request from the environment set by the fixture
            app = chalice_app.app
        self._client: Any = Client(app, stage_name="dev", project_dir=str(app_dir))
        http = self._client.http
        if not isinstance(getattr(http, "_local_gateway", None), LocalGateway):
            raise RuntimeError("chalice.test.Client no longer keeps its LocalGateway in http._local_gateway")
        http._local_gateway = LimitedLocalGateway(app, http._config)
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

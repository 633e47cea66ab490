"""The Azure frontend in-process: the function app's own function behind an httpx transport.

The contract suite talks httpx; with this transport each request goes, with no socket in between,
through the same host logic as ``infra/local/azure_host.py`` (Kestrel's path handling, the route
templates of ``app.get_functions()``, ``func.HttpRequest`` in, the worker's response converter out)
into the unchanged ``azure_app/function_app.py``. Like the Python worker's thread pool, calls may run
concurrently. The app's settings come from ``os.environ``, as app settings do in Azure; the router is
built from them on the first request after the transport is made.
"""

from __future__ import annotations

import sys

import httpx

from infra.local.azure_host import APP_DIR, FunctionsHost
from tests.contract.helpers import RawResponse

__all__ = ["AzureFunctionsTransport"]


class AzureFunctionsTransport(httpx.BaseTransport):
    """Hands each httpx request, its raw path unchanged, to the function app's HTTP function."""

    def __init__(self) -> None:
        self._host = FunctionsHost.load(APP_DIR)
        # built on the next request, from the environment the fixture has just set
        sys.modules["azurelib.bootstrap"].router.cache_clear()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        answer = self._host.handle(
            request.method,
            request.url.raw_path.decode("ascii"),
            headers,
            request.read(),
            scheme=request.url.scheme,
            host=request.url.netloc.decode("ascii"),
        )
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)

    def raw(self, method: str, path: str, headers: dict[str, str], body: bytes) -> RawResponse:
        """The path exactly as given (httpx would remove dot segments), as an attacker would send it."""
        answer = self._host.handle(method, path, list(headers.items()), body, host="azure.inprocess")
        return RawResponse(answer.status, {k.lower(): v for k, v in answer.headers}, answer.body)

    def close(self) -> None:
        """Nothing to release: the app's clients live as long as the process, as in a worker."""

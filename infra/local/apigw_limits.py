"""API Gateway's and Lambda's hard limits around Chalice's local API Gateway emulation.

``chalice local`` and ``chalice.test.Client`` both hand requests to ``chalice.local.LocalGateway``,
which enforces none of the limits the cloud does. :class:`LimitedLocalGateway` is that gateway with
them, so a request the cloud would refuse fails in tests too (the numbers are in ``core/limits.py``):

- a request body over ``APIGW_BODY_BYTES`` (10 MB): 413, from API Gateway, before any routing;
- a proxy event over ``LAMBDA_PAYLOAD_BYTES`` (6 MB as JSON: the body plus the headers, path and
  context; a binary body counts base64-encoded): 413, the Lambda invocation is refused;
- a response object over ``LAMBDA_PAYLOAD_BYTES`` as JSON: 502 ``Internal server error``, as API
  Gateway answers when Lambda fails the invocation for its payload size;
- no answer within ``APIGW_TIMEOUT_S`` (29 s): 504 ``Endpoint request timed out``. As in the cloud the
  invocation goes on; this gateway takes its next request only when it has finished (one at a time,
  like a Lambda container).

The in-process transport (``tests/aws_inprocess.py``) puts it into ``chalice.test.Client``;
``python infra/local/apigw_limits.py local ...`` is ``chalice local ...`` with it (what
:func:`infra.local.servers.start_chalice_local` runs).
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException

from core.limits import APIGW_BODY_BYTES, APIGW_TIMEOUT_S, LAMBDA_PAYLOAD_BYTES

__all__ = [
    "BadGatewayError",
    "GatewayTimeoutError",
    "LimitedLocalGateway",
    "PayloadTooLargeError",
    "event_bytes",
    "main",
    "response_bytes",
]

TIMEOUT_ENV = "PDCAT_APIGW_TIMEOUT_S"
"""For the harness's own tests only: a shorter integration timeout for ``chalice local``."""


def _headers() -> dict[str, Any]:
    return {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())}


class PayloadTooLargeError(LocalGatewayException):
    """API Gateway's ``REQUEST_TOO_LARGE`` answer."""

    CODE = 413

    def __init__(self) -> None:
        super().__init__(_headers(), b'{"message":"Request Too Long"}')


class BadGatewayError(LocalGatewayException):
    """What API Gateway answers when the Lambda invocation fails (here: a response over the payload cap)."""

    CODE = 502

    def __init__(self) -> None:
        super().__init__(_headers(), b'{"message": "Internal server error"}')


class GatewayTimeoutError(LocalGatewayException):
    """API Gateway's ``INTEGRATION_TIMEOUT`` answer."""

    CODE = 504

    def __init__(self) -> None:
        super().__init__(_headers(), b'{"message": "Endpoint request timed out"}')


def _json_size(value: Any) -> int:
    def text(obj: Any) -> str:
        if isinstance(obj, (bytes, bytearray)):
            return bytes(obj).decode("utf-8", "replace")
        raise TypeError(f"not JSON: {type(obj).__name__}")

    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=text).encode())


def event_bytes(event: dict[str, Any]) -> int:
    """The proxy event's size as Lambda receives it: JSON, the body as text (or base64 for binary)."""
    return _json_size(event)


def response_bytes(response: dict[str, Any]) -> int:
    """The size of the response object the function returns (statusCode, headers, body...) as JSON."""
    return _json_size(response)


class LimitedLocalGateway(LocalGateway):
    """``LocalGateway`` with API Gateway's request size and timeout and Lambda's payload limits."""

    timeout_s: float = APIGW_TIMEOUT_S

    def __init__(self, app_object: Any, config: Config, *, timeout_s: float | None = None) -> None:
        super().__init__(app_object, config)
        if timeout_s is not None:
            self.timeout_s = timeout_s
        self._busy = threading.Lock()

    def _generate_lambda_event(self, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        event = super()._generate_lambda_event(method, path, headers, body)
        # API Gateway hands Lambda its path parameters percent-decoded ("%6Bt" arrives as "kt");
        # chalice's local gateway passes them as they were sent, so an app tested here would see
        # another value than in the cloud.
        params = event.get("pathParameters")
        if params:
            event["pathParameters"] = {name: unquote(value) for name, value in params.items()}
        if event_bytes(event) > LAMBDA_PAYLOAD_BYTES:
            raise PayloadTooLargeError()
        return event

    def handle_request(self, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        if len(body or b"") > APIGW_BODY_BYTES:
            raise PayloadTooLargeError()
        invoke = super().handle_request
        future: Future[Any] = Future()
        context = contextvars.copy_context()

        def run() -> None:
            with self._busy:
                try:
                    future.set_result(context.run(invoke, method, path, headers, body))
                except BaseException as exc:  # handed to the caller, as the direct call would raise it
                    future.set_exception(exc)

        threading.Thread(target=run, name="lambda-invocation", daemon=True).start()
        try:
            response = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise GatewayTimeoutError() from None
        if response_bytes(response) > LAMBDA_PAYLOAD_BYTES:
            raise BadGatewayError()
        return response


def main(argv: list[str] | None = None) -> int:
    """``chalice <argv>`` (``local --no-autoreload ...``) with :class:`LimitedLocalGateway` in place."""
    import chalice.local
    from chalice.cli import main as chalice_main

    if os.environ.get(TIMEOUT_ENV):
        LimitedLocalGateway.timeout_s = float(os.environ[TIMEOUT_ENV])
    # ChaliceRequestHandler builds its gateway from this module attribute for every connection
    chalice.local.LocalGateway = LimitedLocalGateway  # type: ignore[misc]
    sys.argv = ["chalice", *(sys.argv[1:] if argv is None else argv)]
    return int(chalice_main() or 0)


if __name__ == "__main__":
    # run as a script: keep this folder off the app's import path, as the `chalice` script would
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    sys.exit(main())

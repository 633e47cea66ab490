"""The AWS frontend: API Gateway + Lambda through Chalice. Wiring only.

Every path of the contract (``core.api.route_shapes``) is registered and handed, unchanged, to the
one router in ``core``: this module converts Chalice's request into ``core.http.Request`` and the
answer back, nothing else. The service and its adapters are built on the first request, so importing
this module (the Lambda cold start) stays cheap. Garbage collection runs on a schedule (``gc``).
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

from chalice.app import Chalice, Rate, Response
from chalicelib.bootstrap import router

from core.api import route_shapes
from core.http import Request

app = Chalice(app_name="pdcat")
# Chalice gives its logger (named after the app: "pdcat") a plain-text stdout handler at ERROR and stops
# propagation there. core logs under "pdcat.*", so hand that logger back to the root logger, whose JSON
# handler the bootstrap configures: otherwise every request line would be dropped in Lambda.
app.log.handlers.clear()
app.log.propagate = True
app.log.setLevel(logging.NOTSET)


def _raw_path(pattern: str, params: dict[str, str] | None) -> str:
    """Rebuild the percent-encoded path, so an encoded '/' inside an id cannot change the route."""
    path = pattern
    for name, value in (params or {}).items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def _bytes(body: str | bytes | None) -> bytes:
    """Chalice types the raw body as text or bytes (it always hands bytes over): core takes bytes."""
    if isinstance(body, str):
        return body.encode()
    return body or b""


def _handler(pattern: str) -> Any:
    def view(**params: str) -> Response:
        current = app.current_request
        if current is None:  # Chalice sets it before it calls any view
            raise RuntimeError("a view was called outside a request")
        headers = dict(current.headers)
        if not any(name.lower() == "x-request-id" for name in headers):
            # API Gateway's own id, so a log line can be found from the gateway's access log
            gateway_id = (current.context or {}).get("requestId")
            if gateway_id:
                headers["X-Request-Id"] = str(gateway_id)
        request = Request(
            method=current.method,
            path=_raw_path(pattern, params),
            query={k: v for k, v in (current.query_params or {}).items()},
            headers=headers,
            body=_bytes(current.raw_body),
            client=((current.context or {}).get("identity") or {}).get("sourceIp"),  # API Gateway saw it
        )
        answer = router().dispatch(request)
        headers_out: dict[str, str | list[str]] = dict(answer.headers)
        return Response(body=answer.body.decode(), status_code=answer.status, headers=headers_out)

    return view


# Every method on every path of the contract, so a wrong method reaches the router (405 with Allow)
# instead of API Gateway's own 403; and parameter-only paths of every depth as a fallback, so an
# unknown path gets the contract's 404 (API Gateway prefers static path parts to parameters).
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_DEPTH = max(pattern.count("/") for pattern in route_shapes()) + 1
_FALLBACKS = ["/" + "/".join(f"{{p{i}}}" for i in range(n)) for n in range(1, _DEPTH + 1)]

for _pattern in [*route_shapes(), *_FALLBACKS]:
    _name = "api_" + "".join(c if c.isalnum() else "_" for c in _pattern).strip("_")
    app.route(_pattern, methods=_METHODS, name=_name, content_types=["application/json", "text/plain"])(
        _handler(_pattern)
    )


# Garbage collection (docs/adr-002-storage-protocol-v2.md): one step an hour, a page of catalog ids
# within the budget, its cursor kept in storage. The budget leaves a third of the function's time
# (at least 10 s) for the catalog in progress when it runs out: 600 s under a 900 s timeout.
@app.schedule(Rate(1, unit=Rate.HOURS), name="gc")
def collect_garbage(event: Any) -> None:
    from chalicelib.dynamo_store import DynamoManifestStore
    from chalicelib.s3_blobs import S3BlobStore

    from core.config import load_settings
    from core.gc import run_scheduled
    from core.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, log_format=settings.log_format)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    store = DynamoManifestStore(
        os.environ["PDCAT_TABLE"], region=region, host=os.environ.get("PDCAT_DYNAMODB_ENDPOINT") or None
    )
    blobs = S3BlobStore(
        os.environ["PDCAT_BUCKET"], region=region, endpoint_url=os.environ.get("PDCAT_S3_ENDPOINT") or None
    )
    remaining = getattr(getattr(event, "context", None), "get_remaining_time_in_millis", lambda: 900_000)() / 1000
    run_scheduled(store, blobs, budget_seconds=min(600.0, remaining - max(10.0, remaining / 3)))

"""The Azure frontend: one HTTP-triggered Azure Function (Python v2 model). Wiring only.

The function's route is the catch-all ``{*path}`` with every method, and ``host.json`` sets an empty
``routePrefix``, so every request reaches core's one router: unknown paths get the contract's 404 and
a wrong method gets its 405 with ``Allow``, never the Functions host's own answers.

The path handed to the router is taken from ``req.url``, which the host builds from the request path
as Kestrel decoded it: Kestrel leaves an encoded ``/`` (``%2F``) encoded, so an encoded slash inside
an id stays inside that id and cannot change the route. The catch-all route parameter is not used
(it is already decoded). Nothing heavy is imported here: the service, its adapters and the Azure SDKs
are built on the first request (``azurelib.bootstrap``), so the cold start stays cheap.

A timer-triggered function (``gc``) runs a step of garbage collection every hour.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azurelib.bootstrap import dispatch

from core.http import Request, Response

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def to_core_request(req: func.HttpRequest) -> Request:
    """The platform request as core's; the query comes from the URL so blank values survive."""
    url = urlsplit(req.url)
    return Request(
        method=req.method,
        path=url.path or "/",
        query=dict(parse_qsl(url.query, keep_blank_values=True)),
        headers=dict(req.headers.items()),
        body=req.get_body() or b"",
    )


def to_http_response(answer: Response) -> func.HttpResponse:
    """Core's answer as the platform's; its Content-Type is passed on as is (the worker adds none then)."""
    return func.HttpResponse(body=answer.body, status_code=answer.status, headers=answer.headers)


# No ``methods``: the host then routes every verb here, so a wrong one gets core's 405 with Allow.
@app.function_name("api")
@app.route(route="{*path}")
def api(req: func.HttpRequest) -> func.HttpResponse:
    return to_http_response(dispatch(to_core_request(req)))


# Garbage collection (docs/adr-002-storage-protocol-v2.md): one step an hour, a page of catalog ids
# within the budget, its cursor kept in storage. host.json's functionTimeout is 5 minutes: the budget
# leaves a minute for the catalog in progress when it runs out.
@app.function_name("gc")
@app.timer_trigger(schedule="0 17 * * * *", arg_name="timer", run_on_startup=False)
def collect_garbage(timer: func.TimerRequest) -> None:
    from azurelib.bootstrap import _configure_logs, _stores, load_azure_settings

    from core.config import load_settings
    from core.gc import run_scheduled

    _configure_logs(load_settings(os.environ))
    store, _, blobs = _stores(load_azure_settings(os.environ))
    run_scheduled(store, blobs, budget_seconds=240.0)

"""The router: matching, 404/405, the one error shape, and no stack trace for a bug."""

from __future__ import annotations

import json

from core.errors import Conflict, Unauthenticated
from core.http import Call, Request, Response, Route, Router
from core.openapi import openapi_document
from core.rbac import Principal


def _router() -> Router:
    def echo(call: Call) -> Response:
        return Response.json({"params": call.params, "who": call.principal.subject})

    def boom(call: Call) -> Response:
        raise RuntimeError("secret internals /etc/passwd")

    def conflict(call: Call) -> Response:
        raise Conflict("already there")

    def authenticate(request: Request) -> Principal:
        if request.header("authorization") != "Bearer ok":
            raise Unauthenticated("no")
        return Principal.of("alice")

    routes = [
        Route("GET", "/open", echo, "open", auth=False),
        Route("GET", "/things/{id}", echo, "one"),
        Route("DELETE", "/things/{id}", echo, "delete"),
        Route("GET", "/boom", boom, "bug"),
        Route("POST", "/conflict", conflict, "conflict"),
    ]
    return Router(routes, authenticate, max_body=10)


AUTH = {"Authorization": "Bearer ok"}


def _call(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict]:
    response = _router().dispatch(Request(method, path, {}, headers or {}, body))
    assert response.headers["X-Request-Id"]
    return response.status, json.loads(response.body) if response.body else {}


def test_params_are_percent_decoded_per_segment() -> None:
    status, body = _call("GET", "/api/v1/things/a%20b", AUTH)
    assert status == 200 and body == {"params": {"id": "a b"}, "who": "alice"}


def test_encoded_slash_stays_inside_its_segment() -> None:
    status, body = _call("GET", "/api/v1/things/a%2Fb", AUTH)
    assert status == 200 and body["params"] == {"id": "a/b"}


def test_unknown_route_and_wrong_method() -> None:
    assert _call("GET", "/api/v1/nope")[0] == 404
    assert _call("GET", "/elsewhere")[0] == 404
    router = _router()
    response = router.dispatch(Request("PUT", "/api/v1/things/1", {}, AUTH))
    assert response.status == 405 and response.headers["Allow"] == "DELETE, GET"


def test_auth_runs_before_the_handler() -> None:
    status, body = _call("GET", "/api/v1/things/1")
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert _call("GET", "/api/v1/open")[0] == 200


def test_errors_have_one_shape_and_bugs_leak_nothing() -> None:
    status, body = _call("POST", "/api/v1/conflict", AUTH)
    assert status == 409 and body == {"error": {"code": "conflict", "message": "already there"}}
    status, body = _call("GET", "/api/v1/boom", AUTH)
    assert status == 500 and body["error"]["code"] == "internal"
    assert "passwd" not in body["error"]["message"] and "Traceback" not in body["error"]["message"]


def test_oversized_body_is_413() -> None:
    status, body = _call("POST", "/api/v1/conflict", AUTH, b"x" * 11)
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_openapi_lists_every_route() -> None:
    doc = openapi_document(_router().routes)
    assert set(doc["paths"]) == {"/api/v1/open", "/api/v1/things/{id}", "/api/v1/boom", "/api/v1/conflict"}
    assert set(doc["paths"]["/api/v1/things/{id}"]) == {"get", "delete"}
    assert doc["paths"]["/api/v1/open"]["get"]["security"] == []

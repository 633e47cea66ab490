"""The router: matching, 404/405, the one error shape, no stack trace for a bug, and the claim of every
route of the contract enforced before its handler (generated from ``core.api``'s route table)."""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn, cast

import pytest

from core.api import build_routes
from core.errors import Conflict, Unauthenticated, Unprocessable
from core.http import API_PREFIX, Call, Request, Response, Route, Router
from core.openapi import openapi_document
from core.rbac import ALL_CLAIMS, ROLE_CLAIMS, Claim, Principal
from core.service import CatalogService


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


# ---- the route table's claims, enforced by the router (generated from core.api's table) ---------

_PARAMS = {"id": "ubuntu", "version": "1.0", "arch": "arm64", "upload_id": "abc", "key_id": "k1"}
# What each handler needs in its body to reach the service (the list editors read one field).
_BODY = json.dumps({"roles": [], "claims": [], "tags": [], "username": "u", "password": "p"}).encode()


class _ServiceSpy:
    """Stands in for CatalogService: records the use case a handler reached, then answers 422."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def use_case(*args: object, **kwargs: object) -> NoReturn:
            self.reached.append(name)
            raise Unprocessable(f"reached the service: {name}")

        return use_case


def _routes(service: object) -> list[Route]:
    """The table as the embedded server has it: with password login and its refresh."""
    return build_routes(
        cast(CatalogService, service), token_issuer=lambda u, p: {"token": "t"}, token_refresher=lambda w, a: {}
    )


def _table() -> list[Route]:
    return _routes(_ServiceSpy())


def _route_id(route: Route) -> str:
    return f"{route.method} {route.pattern}"


def _dispatch_as(route: Route, principal: Principal | None) -> tuple[Response, _ServiceSpy, list[Request]]:
    """Dispatch one request to ``route`` as ``principal`` (None: no credentials at all)."""
    spy = _ServiceSpy()
    authenticated: list[Request] = []

    def authenticate(request: Request) -> Principal:
        authenticated.append(request)
        if principal is None:
            raise Unauthenticated("no credentials")
        return principal

    router = Router(_routes(spy), authenticate)
    path = API_PREFIX + re.sub(r"\{([a-z_]+)\}", lambda m: _PARAMS[m.group(1)], route.pattern)
    response = router.dispatch(Request(route.method, path, {}, {"Content-Type": "application/json"}, _BODY))
    return response, spy, authenticated


_CLAIMED = [r for r in _table() if r.claim is not None]
_OPEN = [r for r in _table() if not r.auth]


def test_the_table_declares_a_claim_on_every_authenticated_route_but_whoami_and_refresh() -> None:
    assert len(_CLAIMED) >= 30
    assert all(r.auth for r in _CLAIMED)
    assert [_route_id(r) for r in _table() if r.auth and r.claim is None] == ["POST /auth/refresh", "GET /auth/whoami"]
    assert {_route_id(r) for r in _OPEN} == {"GET /health", "GET /openapi.json", "GET /docs", "POST /auth/token"}
    # what is enforced is what is documented: 401 and 403 on every claimed route, no 403 on open ones
    assert all({401, 403} <= set(r.responses) for r in _CLAIMED)
    assert not any(403 in r.responses for r in _OPEN)


@pytest.mark.parametrize("route", _CLAIMED, ids=_route_id)
def test_a_caller_without_the_routes_claim_is_refused_before_the_handler(route: Route) -> None:
    assert route.claim is not None
    lacking = [Principal.of("mallory", claims=sorted(ALL_CLAIMS - {route.claim})), Principal.of("nobody")]
    lacking += [
        Principal.of(role.lower(), roles=[role]) for role in ROLE_CLAIMS if route.claim not in ROLE_CLAIMS[role]
    ]
    for who in lacking:
        response, spy, _ = _dispatch_as(route, who)
        assert response.status == 403, (route.pattern, response.body)
        body = json.loads(response.body)
        message = f"this needs the {route.claim} claim, which {who.subject!r} does not have"
        assert body == {"error": {"code": "forbidden", "message": message}}  # exactly what require() raises
        assert spy.reached == []  # the handler never ran: nothing parsed, nothing asked of the service


@pytest.mark.parametrize("route", _CLAIMED, ids=_route_id)
def test_a_caller_with_only_the_routes_claim_reaches_the_service(route: Route) -> None:
    assert route.claim is not None
    response, spy, _ = _dispatch_as(route, Principal.of("carol", claims=[route.claim]))
    assert response.status == 422 and len(spy.reached) == 1, (route.pattern, response.body)
    response, spy, _ = _dispatch_as(route, Principal.of("root", roles=["SUPER_USER"]))
    assert response.status == 422 and len(spy.reached) == 1


@pytest.mark.parametrize("route", _CLAIMED, ids=_route_id)
def test_no_credentials_is_401_not_403(route: Route) -> None:
    response, spy, _ = _dispatch_as(route, None)
    assert response.status == 401 and spy.reached == []


@pytest.mark.parametrize("route", _OPEN, ids=_route_id)
def test_routes_without_auth_need_no_credentials_and_no_claim(route: Route) -> None:
    response, spy, authenticated = _dispatch_as(route, None)
    assert response.status == 200, response.body
    assert authenticated == [] and spy.reached == []


def test_whoami_needs_credentials_but_no_claim() -> None:
    (whoami,) = [r for r in _table() if r.pattern == "/auth/whoami"]
    response, _, _ = _dispatch_as(whoami, Principal.of("nobody"))
    assert response.status == 200 and json.loads(response.body)["subject"] == "nobody"


def test_a_route_table_with_a_bad_claim_is_refused_at_construction() -> None:
    def handler(call: Call) -> Response:
        return Response.empty()

    with pytest.raises(ValueError, match="unknown claim"):
        Router([Route("GET", "/x", handler, "x", claim="PULL_CATALOG_MANIFST")], lambda r: Principal.of("a"))
    with pytest.raises(ValueError, match="without auth"):
        Router([Route("GET", "/x", handler, "x", auth=False, claim=Claim.PULL)], lambda r: Principal.of("a"))

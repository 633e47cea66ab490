"""Framework-free HTTP values and the one router every frontend serves.

Frontends (the embedded WSGI server, Chalice, Azure Functions) only convert their native request into
:class:`Request`, call :meth:`Router.dispatch`, and convert the :class:`Response` back. Routing,
authentication, the route's claim, error mapping and request ids happen here, once.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from core.errors import InvalidInput, MethodNotAllowed, NotFound, PayloadTooLarge, PdcatError
from core.limits import API_BODY_BUDGET_BYTES
from core.rbac import ANONYMOUS, Claim, Principal, require

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "Call",
    "Request",
    "Response",
    "Route",
    "Router",
]

log = logging.getLogger("pdcat.http")

API_PREFIX = "/api/v1"
MAX_BODY = API_BODY_BUDGET_BYTES  # every API body stays under 1 MiB, whatever the VM size (ADR 002)
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str | None = None
    """The caller's address as the frontend saw it (the embedded server: ``REMOTE_ADDR``), if it knows."""

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup: frontends hand us whatever casing their platform uses."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body is an empty object."""
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInput("the request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidInput("the request body must be a JSON object")
        return data


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        body = json.dumps(data, separators=(",", ":"), sort_keys=False).encode()
        return cls(status, body, {"Content-Type": "application/json"})

    @classmethod
    def empty(cls, status: int = 204) -> Response:
        return cls(status)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> Response:
        return cls.json({"error": {"code": code, "message": message}}, status)


@dataclass(frozen=True)
class Call:
    """What a handler gets: the request, the authenticated caller and the path parameters."""

    request: Request
    principal: Principal
    params: dict[str, str]

    def query_int(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"query parameter {name!r} must be an integer") from None
        if not minimum <= value <= maximum:
            raise InvalidInput(f"query parameter {name!r} must be between {minimum} and {maximum}")
        return value

    def query_bool(self, name: str) -> bool:
        raw = (self.request.query.get(name) or "").lower()
        if raw in ("", "0", "false", "no"):
            return False
        if raw in ("1", "true", "yes"):
            return True
        raise InvalidInput(f"query parameter {name!r} must be true or false")


Handler = Callable[[Call], Response]


@dataclass(frozen=True)
class Route:
    """One entry of the contract, and of the OpenAPI document.

    ``auth``: the caller must authenticate (401 otherwise). ``claim``: the router refuses (403) a
    caller without it, after authentication and before the handler runs; the service checks it again.
    """

    method: str
    pattern: str
    handler: Handler
    summary: str
    auth: bool = True
    claim: str | None = None
    body: dict[str, Any] | None = None
    responses: tuple[int, ...] = (200,)
    tag: str = "catalog"
    answer: str | None = None  # the success body's schema, a name in core.wire.SCHEMAS

    @property
    def segments(self) -> list[str]:
        return self.pattern.strip("/").split("/")

    def match(self, parts: list[str]) -> dict[str, str] | None:
        segments = self.segments
        if len(segments) != len(parts):
            return None
        params: dict[str, str] = {}
        for segment, part in zip(segments, parts, strict=True):
            name = _PARAM.fullmatch(segment)
            if name:
                params[name.group(1)] = part
            elif segment != part:
                return None
        return params


Authenticate = Callable[[Request], Principal]


def _check_claim(route: Route) -> None:
    """A route's claim must be a known one, on an authenticated route: a typo must not become a 500
    at dispatch, nor a claim on an anonymous route be silently ignored."""
    if route.claim is None:
        return
    if not route.auth:
        raise ValueError(f"{route.method} {route.pattern}: a route without auth cannot require a claim")
    try:
        Claim(route.claim)
    except ValueError:
        raise ValueError(f"{route.method} {route.pattern}: unknown claim {route.claim!r}") from None


class Router:
    """Dispatches a :class:`Request` to the route table; the only place errors become responses."""

    def __init__(self, routes: list[Route], authenticate: Authenticate, *, max_body: int = MAX_BODY) -> None:
        for route in routes:
            _check_claim(route)
        self.routes = routes
        self._authenticate = authenticate
        self._max_body = max_body

    def dispatch(self, request: Request) -> Response:
        request_id = request.header("x-request-id") or uuid.uuid4().hex
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", request_id):
            request_id = uuid.uuid4().hex
        started = time.perf_counter()
        principal = ANONYMOUS
        try:
            route, params = self._find(request)
            if len(request.body) > self._max_body:
                raise PayloadTooLarge(f"request body is larger than {self._max_body} bytes")
            if route.auth:
                principal = self._authenticate(request)
                if route.claim is not None:
                    require(principal, Claim(route.claim))
            response = route.handler(Call(request, principal, params))
        except PdcatError as exc:
            response = Response.error(exc.status, exc.code, exc.message)
            if isinstance(exc, MethodNotAllowed):
                response.headers["Allow"] = ", ".join(self._allowed(request.path))
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="pdcat"'
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            response = Response.error(500, "internal", f"internal error (request id {request_id})")
        response.headers["X-Request-Id"] = request_id
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "subject": principal.subject,
                "client": request.client,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return response

    def _split(self, path: str) -> list[str]:
        if not path.startswith(API_PREFIX + "/"):
            raise NotFound(f"no such route: {path[:200]}")
        parts = path[len(API_PREFIX) :].strip("/").split("/")
        try:
            return [unquote(p, errors="strict") for p in parts]
        except UnicodeDecodeError:
            raise InvalidInput("the path is not valid UTF-8") from None

    def _matching(self, parts: list[str]) -> list[tuple[Route, dict[str, str]]]:
        """The routes whose pattern matches, the most literal ones only: ``/catalog/import`` is the
        import route's path for every method, never a catalog id called "import"."""
        found = [(route, params) for route in self.routes if (params := route.match(parts)) is not None]
        fewest = min((len(params) for _, params in found), default=0)
        return [(route, params) for route, params in found if len(params) == fewest]

    def _find(self, request: Request) -> tuple[Route, dict[str, str]]:
        matching = self._matching(self._split(request.path))
        for route, params in matching:
            if route.method == request.method.upper():
                return route, params
        if matching:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path[:200]}")
        raise NotFound(f"no such route: {request.method} {request.path[:200]}")

    def _allowed(self, path: str) -> list[str]:
        try:
            parts = self._split(path)
        except PdcatError:
            return []
        return sorted({route.method for route, _ in self._matching(parts)})

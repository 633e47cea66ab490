"""OpenAPI 3.1 document generated from the route table, so it cannot drift from what is served.

Every schema lives in :data:`core.wire.SCHEMAS`; a route names its request body, its success answer and
the statuses only it can answer (404, 409, 410, 422, 429...). The statuses every route of a kind can
answer are added here, so none is forgotten:

- 405 (another method), 413 (a body over 1 MiB) and 503 (the catalog is starting, or its database,
  storage or identity provider is unavailable) on every route;
- 401 on every authenticated route, 403 on every route that checks a claim;
- 400 on every route that reads a body, a path parameter or a query parameter.

``tests/contract/test_openapi_conformance.py`` runs schemathesis against live servers with this document.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from core.wire import SCHEMAS, ref

if TYPE_CHECKING:
    from core.http import Route

__all__ = ["PATH_PARAMETERS", "openapi_document"]

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Invalid input",
    401: "Not authenticated",
    403: "Missing a claim",
    404: "Not found or not visible",
    405: "Method not allowed",
    409: "Exists, conflict or tainted",
    410: "Revoked",
    413: "Request body larger than 1 MiB",
    422: "Semantically invalid",
    429: "Too many requests",
    503: "The catalog is starting, or a backend it depends on is unavailable",
}
_EVERY_ROUTE = frozenset({405, 413, 503})
_OBJECT = {"type": "object"}
_JSON = "application/json"
_PARAM = re.compile(r"\{([a-z_]+)\}")

# The schema of each path parameter, by name (core.identity's rules). ``{version}`` accepts 'latest'
# only where the route says so (``latest=True`` on an ``ApiRoute``).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "id": ref("CatalogId"),
    "version": ref("Version"),
    "arch": ref("Architecture"),
    "upload_id": {"type": "string", "minLength": 1, "description": "the upload_id a push answered"},
    "key_id": {"type": "string", "minLength": 1, "description": "an API key's id"},
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    405: {"Allow": {"required": True, "schema": {"type": "string"}, "description": "the methods this path serves"}},
    429: {"Retry-After": {"required": True, "schema": {"type": "string"}, "description": "seconds to wait"}},
}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PARAM.findall(route.pattern):
        schema = PATH_PARAMETERS.get(name, {"type": "string"})
        if name == "version" and getattr(route, "latest", False):
            schema = ref("VersionOrLatest")
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    for name, schema, description in getattr(route, "query", ()):
        params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": description})
    return params


def _statuses(route: Route, params: list[dict[str, Any]]) -> list[int]:
    statuses = set(route.responses) | _EVERY_ROUTE
    if route.auth:
        statuses.add(401)
    if route.claim:
        statuses.add(403)
    if route.body is not None or params:
        statuses.add(400)
    return sorted(statuses)


def _response(route: Route, status: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "")}
    if status >= 400:
        entry["content"] = {"application/json": {"schema": ref("Error")}}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
    elif status != 204:
        media = getattr(route, "media_type", _JSON)  # the docs page answers text/html
        unnamed = _OBJECT if media == _JSON else {"type": "string"}
        schema = ref(route.answer) if route.answer else unnamed
        entry["content"] = {media: {"schema": schema}}
    return entry


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.answer is not None and route.answer not in SCHEMAS:
            raise ValueError(f"{route.method} {route.pattern}: no schema named {route.answer!r} in core.wire")
        params = _parameters(route)
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.pattern.lower()).strip('_')}",
            "tags": [route.tag],
            "parameters": params,
            "responses": {str(status): _response(route, status) for status in _statuses(route, params)},
        }
        if route.claim:
            op["x-required-claim"] = route.claim
        op["security"] = [{"bearer": []}, {"apiKey": []}] if route.auth else []
        if route.body is not None:
            # An empty body reads as {}: it may be left out exactly when the schema requires no field.
            op["requestBody"] = {
                "required": bool(route.body.get("required")),
                "content": {"application/json": {"schema": route.body}},
            }
        paths.setdefault("/api/v1" + route.pattern, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pdcat catalog API",
            "version": "1",
            "description": "Metadata and presigned URLs for Parallels Desktop VM packs. Never moves VM bytes. "
            'Every error is {"error": {"code": "...", "message": "..."}}.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
            "schemas": dict(SCHEMAS),
        },
    }

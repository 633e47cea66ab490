"""OpenAPI 3.1 document generated from the route table, so it cannot drift from what is served."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from core.wire import SCHEMAS

if TYPE_CHECKING:
    from core.http import Route

__all__ = ["openapi_document"]

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
    413: "Too large",
    422: "Semantically invalid",
    503: "A backend is unavailable",
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT = {"type": "object"}


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{([a-z_]+)\}", route.pattern)
        ]
        responses: dict[str, Any] = {}
        for status in sorted(set(route.responses) | {400, 405, 413} if route.body else set(route.responses) | {405}):
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "")}
            if status >= 400:
                entry["content"] = {"application/json": {"schema": _ERROR}}
            elif status != 204:
                schema = {"$ref": f"#/components/schemas/{route.answer}"} if route.answer else _OBJECT
                entry["content"] = {"application/json": {"schema": schema}}
            responses[str(status)] = entry
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.pattern.lower()).strip('_')}",
            "tags": [route.tag],
            "parameters": params,
            "responses": responses,
        }
        if route.claim:
            op["x-required-claim"] = route.claim
        if route.auth:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
        else:
            op["security"] = []
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        paths.setdefault("/api/v1" + route.pattern, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pdcat catalog API",
            "version": "1",
            "description": "Metadata and presigned URLs for Parallels Desktop VM packs. Never moves VM bytes.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
            "schemas": {
                **SCHEMAS,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
        },
    }

"""OpenAPI 3.1 document generated from the route table, so it cannot drift from what is served."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

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
_PULL = "/catalog/{id}/{version}/{arch}/pull"
# Success bodies worth a schema: a pull answers one of two shapes, and clients must tell them apart.
_RESPONSE_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", _PULL): {"$ref": "#/components/schemas/PullAnswer"},
    ("POST", _PULL + "/urls"): {"$ref": "#/components/schemas/PullUrlsAnswer"},
}
_OBJECT = {"type": "object"}
_STRING = {"type": "string"}
_URLS = {"type": "object", "additionalProperties": _STRING, "description": "sha256 digest -> presigned GET URL"}
_SCHEMAS: dict[str, Any] = {
    "PdpackDownload": {
        "type": "object",
        "description": "An imported pack in the original product's format: one tar/tar.gz object behind one "
        "short-lived GET URL, checked against its .meta's checksum",
        "required": ["format", "url", "size", "checksum", "compressed"],
        "properties": {
            "format": {"const": "pdpack"},
            "url": _STRING,
            "size": {"type": "integer", "description": "bytes of the pack object"},
            "checksum": {"type": "string", "description": "hex MD5 (SHA-1 or SHA-256 by its length)"},
            "checksum_algorithm": {"enum": ["md5", "sha1", "sha256"]},
            "compressed": {"type": "boolean", "description": "the .meta's is_compressed (readers sniff gzip)"},
        },
    },
    "PullAnswer": {
        "oneOf": [
            {
                "type": "object",
                "title": "pdcat pack",
                "required": ["manifest", "index", "urls", "expires_at"],
                "properties": {"manifest": _OBJECT, "index": _OBJECT, "urls": _URLS, "expires_at": _STRING},
            },
            {
                "type": "object",
                "title": "original-format pack (imported)",
                "required": ["manifest", "pack", "expires_at"],
                "properties": {
                    "manifest": _OBJECT,
                    "pack": {"$ref": "#/components/schemas/PdpackDownload"},
                    "expires_at": _STRING,
                },
            },
        ]
    },
    "PullUrlsAnswer": {
        "oneOf": [
            {
                "type": "object",
                "required": ["urls", "expires_at"],
                "properties": {"urls": _URLS, "expires_at": _STRING},
            },
            {
                "type": "object",
                "required": ["pack", "expires_at"],
                "properties": {"pack": {"$ref": "#/components/schemas/PdpackDownload"}, "expires_at": _STRING},
            },
        ]
    },
}


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
                schema = _RESPONSE_SCHEMAS.get((route.method, route.pattern), _OBJECT)
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
                **_SCHEMAS,
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
                }
            },
        },
    }

"""The API docs page's renderer: every operation and schema on it, nothing but its own stylesheet
allowed or loaded, every link internal, and no text from the document able to become markup."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, cast

import pytest

from core.api import build_routes
from core.limits import API_BODY_BUDGET_BYTES, LAMBDA_PAYLOAD_BYTES
from core.openapi import openapi_document
from core.openapi_html import DOCS_CSP, DOCS_HEADERS, render_docs
from core.service import CatalogService
from core.users import UserAdmin
from tests.docs_page import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, Page, operations_of

# The largest table any backend serves: the embedded server's, with password login and its users.
DOC = openapi_document(
    build_routes(cast(CatalogService, None), token_issuer=lambda u, p: {}, users=cast(UserAdmin, object()))
)


def test_every_operation_is_on_the_page_with_its_anchor_and_every_schema_too() -> None:
    page = Page(render_docs(DOC))
    assert set(page.operations) == operations_of(DOC)
    assert len(page.operations) == len(operations_of(DOC))
    for ops in DOC["paths"].values():
        for op in ops.values():
            assert "op-" + op["operationId"] in page.ids
    for name in DOC["components"]["schemas"]:
        assert "schema-" + name in page.ids
    text = " ".join(page.text)
    for needle in ("PUSH_CATALOG_MANIFEST", "Authorization: Bearer <token>", "X-Api-Key", "WWW-Authenticate"):
        assert needle in text


def test_every_link_stays_on_the_page_or_goes_to_the_json_document_beside_it() -> None:
    html = render_docs(DOC)
    page = Page(html)
    for href in page.hrefs:
        assert href == "openapi.json" or (href.startswith("#") and href[1:] in page.ids), href
    assert "://" not in html and "url(" not in html and "@import" not in html
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS


def test_the_policy_allows_exactly_the_pages_own_stylesheet() -> None:
    page = Page(render_docs(DOC))
    assert len(page.styles) == 1
    digest = base64.b64encode(hashlib.sha256(page.styles[0].encode()).digest()).decode()
    directives = dict(d.strip().split(" ", 1) for d in DOCS_CSP.split(";"))
    assert directives == {
        "default-src": "'none'",
        "style-src": f"'sha256-{digest}'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    assert DOCS_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert DOCS_HEADERS["Content-Type"] == "text/html; charset=utf-8"


def test_the_page_fits_pdcats_body_budget_and_lambdas_response_payload() -> None:
    body = render_docs(DOC)
    assert len(body.encode()) < API_BODY_BUDGET_BYTES
    # Lambda counts the whole response object as JSON (the body's quotes and non-ASCII escaped)
    event = json.dumps({"statusCode": 200, "headers": dict(DOCS_HEADERS), "body": body})
    assert len(event.encode()) < LAMBDA_PAYLOAD_BYTES


HOSTILE = [
    '<script>alert("x")</script>',
    '"><img src=x onerror=alert(1)>',
    "</style><script>alert(2)</script>",
    "' onmouseover='alert(3)",
    "&lt;b&gt;already escaped&lt;/b&gt;",
    "javascript:alert(4)",
    '<a href="https://evil.example/">phish</a>',
]


def _hostile_document(text: str) -> dict[str, Any]:
    """Every place the renderer copies text from: titles, tags, paths, ids, summaries, names, values."""
    schema = {
        "type": "object",
        "description": text,
        "required": [text],
        "properties": {
            text: {"type": "string", "description": text, "pattern": text, "default": text},
            "e": {"enum": [text, 1]},
            "c": {"const": text},
            "r": {"$ref": "#/components/schemas/" + text},
            "x": {"anyOf": [{"type": text}, {"$ref": "#/components/schemas/" + text}], text: text},
        },
        "additionalProperties": False,
        "not": {"required": [text]},
    }
    op = {
        "summary": text,
        "operationId": text,
        "tags": [text],
        "x-required-claim": text,
        "security": [{"bearer": []}, {text: []}],
        "parameters": [{"name": text, "in": text, "required": True, "schema": schema, "description": text}],
        "requestBody": {"required": True, "content": {text: {"schema": schema}}},
        "responses": {
            text: {"description": text, "headers": {text: {}}, "content": {"application/json": {"schema": schema}}}
        },
    }
    return {
        "openapi": text,
        "info": {"title": text, "version": text, "description": text},
        "paths": {"/api/v1/" + text: {"get": op}},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, text: {"type": "apiKey", "name": text}},
            "schemas": {text: schema},
        },
    }


@pytest.mark.parametrize("text", HOSTILE)
def test_no_text_from_the_document_becomes_markup(text: str) -> None:
    html = render_docs(_hostile_document(text))
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS, html
    for _, attrs in page.tags:
        assert set(attrs) <= ALLOWED_ATTRIBUTES, attrs
        for name in ("id", "href"):
            value = attrs.get(name)
            if value is not None:
                assert re.fullmatch(r"#?[A-Za-z0-9_.-]+|openapi\.json", value), value
    assert len(page.styles) == 1 and "script" not in page.styles[0]
    # the text is still there, as text: a reader sees exactly what the document says
    assert sum(chunk.count(text) for chunk in page.text) >= 10
    assert page.operations == [f"GET /api/v1/{text}"]

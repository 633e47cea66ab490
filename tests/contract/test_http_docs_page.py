"""The API docs page, ``GET /api/v1/docs``, on every backend: public, HTML under a policy that lets
nothing load or run, every operation of the backend's own ``openapi.json`` on it, no external URL."""

from __future__ import annotations

from urllib.parse import urljoin

from core.limits import API_BODY_BUDGET_BYTES
from core.openapi_html import DOCS_CSP
from tests.docs_page import ALLOWED_TAGS, Page, operations_of


def test_the_docs_page_is_public_html_under_a_strict_policy(backend):
    with backend.http(anonymous=True, headers={"Authorization": "Bearer garbage"}) as anonymous:
        r = anonymous.get("/docs")
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == DOCS_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-request-id"]
    assert len(r.content) < API_BODY_BUDGET_BYTES
    assert r.text.startswith("<!doctype html>")


def test_every_served_operation_is_on_the_page_and_nothing_leaves_it(backend):
    with backend.http(anonymous=True) as anonymous:
        document = anonymous.get("/openapi.json").json()
        html = anonymous.get("/docs").text
    page = Page(html)
    assert set(page.operations) == operations_of(document)
    assert "GET /api/v1/docs" in page.operations
    for href in page.hrefs:
        assert href == "openapi.json" or (href.startswith("#") and href[1:] in page.ids), href
    assert "://" not in html
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    # the one link that leaves the page, resolved as a browser does, is the document it was made from
    linked = urljoin(backend.api_url + "/docs", "openapi.json")
    with backend.http(anonymous=True) as anonymous:
        assert anonymous.get(linked).json() == document

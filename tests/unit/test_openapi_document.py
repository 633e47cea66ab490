"""The OpenAPI document's own rules: every answer has a schema, every error is the Error schema, and the
identifier patterns of core.wire accept exactly what core.identity accepts (for ASCII without blanks)."""

from __future__ import annotations

import re
from typing import cast

import pytest

from core import pack, wire
from core.api import build_routes
from core.errors import InvalidInput
from core.identity import normalize_architecture, normalize_catalog_id, normalize_role, normalize_tag, normalize_version
from core.openapi import openapi_document
from core.pack import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from core.service import CatalogService, ServiceSettings
from core.wire import (
    ARCHITECTURE_PATTERN,
    CATALOG_ID_PATTERN,
    LATEST_PATTERN,
    MAX_API_KEY_DAYS,
    ROLE_PATTERN,
    SCHEMAS,
    TAG_PATTERN,
    VERSION_PATTERN,
)
from core.wire import MAX_CHUNK_SIZE as WIRE_MAX_CHUNK
from core.wire import MIN_CHUNK_SIZE as WIRE_MIN_CHUNK

DOC = openapi_document(
    build_routes(cast(CatalogService, None), token_issuer=lambda u, p: {}, token_refresher=lambda w, a: {})
)
OPERATIONS = [(path, method, op) for path, ops in DOC["paths"].items() for method, op in ops.items()]


@pytest.mark.parametrize(("path", "method", "op"), OPERATIONS, ids=[f"{m} {p}" for p, m, _ in OPERATIONS])
def test_every_answer_has_a_schema_and_every_error_is_the_error_schema(path: str, method: str, op: dict) -> None:
    statuses = {int(s) for s in op["responses"]}
    assert {405, 413, 503} <= statuses
    if op["security"]:
        assert 401 in statuses
    if op.get("x-required-claim"):
        assert 403 in statuses
    if op["parameters"] or "requestBody" in op:
        assert 400 in statuses
    for status, response in op["responses"].items():
        content = response.get("content", {}).get("application/json", {})
        if int(status) >= 400:
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}
        elif int(status) == 204:
            assert not content
        elif "text/html" in response["content"]:  # the docs page: the one answer that is not JSON
            assert response["content"] == {"text/html": {"schema": {"type": "string"}}}, (method, path)
        else:
            name = content["schema"]["$ref"].rsplit("/", 1)[1]
            assert name in SCHEMAS, (method, path, status)
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert op["requestBody"]["required"] == bool(schema.get("required"))


def _accepts(normalize: object, value: str) -> bool:
    try:
        normalize(value)  # type: ignore[operator]
    except InvalidInput:
        return False
    return True


SAMPLES = [
    "a", "A", "0", "z9", "a.b", "a_b", "a-b", "a:b", "a+b", "-a", ".a", "_a", ":a", "+a", "a/b", "a b", "a%b",
    "x86_64", "X86_64", "amd64", "AMD64", "x64", "arm64", "ARM", "aarch64", "sparc", "latest", "LATEST", "ROLE_1",
    "a" * 64, "a" * 65, "a" * 128, "a" * 129, "", "é",
]  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "normalize"),
    [
        (CATALOG_ID_PATTERN, normalize_catalog_id),
        (TAG_PATTERN, normalize_tag),
        (ROLE_PATTERN, normalize_role),
        (ARCHITECTURE_PATTERN, normalize_architecture),
        (VERSION_PATTERN, lambda v: normalize_version(v, allow_latest=True)),
    ],
)
def test_identifier_patterns_accept_what_the_server_accepts(pattern: str, normalize: object) -> None:
    for value in SAMPLES:
        assert (re.search(pattern, value) is not None) == _accepts(normalize, value), value


def test_a_pushed_version_is_never_latest() -> None:
    for value in ("latest", "Latest", "1.0"):
        documented = re.search(VERSION_PATTERN, value) is not None and re.search(LATEST_PATTERN, value) is None
        assert documented == _accepts(normalize_version, value)


def test_limits_in_the_document_are_the_servers() -> None:
    assert (WIRE_MIN_CHUNK, WIRE_MAX_CHUNK) == (MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    assert wire.PACK_FORMATS == pack.PACK_FORMATS
    assert (wire.BLOCK_SIZES, wire.DEFAULT_BLOCK_SIZE) == (pack.BLOCK_SIZES, pack.DEFAULT_BLOCK_SIZE)
    assert ServiceSettings().max_api_key_days == MAX_API_KEY_DAYS


def test_the_user_schemas_mirror_the_rules() -> None:
    from core import rbac, users

    assert wire.MIN_PASSWORD == users.MIN_PASSWORD
    assert f"^{users._USERNAME.pattern}$" == wire.USERNAME_PATTERN
    assert set(wire.BUILT_IN_ROLES) == {r.value for r in rbac.Role}
    assert set(wire.ALL_CLAIM_NAMES) == set(rbac.ALL_CLAIMS)

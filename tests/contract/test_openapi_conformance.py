"""The OpenAPI document is exact: schemathesis (every check) against live servers finds nothing.

Each backend serves its own ``/api/v1/openapi.json``; schemathesis reads it and, for every operation,
sends requests the document says are valid (they must not be refused as invalid) and requests it says
are invalid (they must be refused), once as a SUPER_USER and once anonymous, and checks every answer:
no server error, a documented status, a documented content type and headers, a body that matches its
schema, ``Allow`` on 405, 401 without credentials. A second test walks a real push and pull, whose
successful answers random requests rarely reach, and validates each against the same document.

Backends: the embedded server (a private one: fuzzing ``/auth/token`` locks the caller's address out
for up to 15 minutes, which would fail every other test logging in from loopback) and ``aws-http``
(``chalice local``, the shared one). Requests that create data only ever name catalog ids unique to
this module (``oa-<hex>-...``); ``/admin/gc`` is always a dry run. Hypothesis is derandomized with a
fixed seed, so a CI run is reproducible: same requests, same verdicts.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from core.api import build_routes
from core.auth import issue_token
from core.identity import ManifestKey
from core.openapi import openapi_document
from core.service import CatalogService, encode_cursor
from infra.local.servers import RunningServer, start_embedded
from tests.backend_names import BACKENDS
from tests.contract.helpers import (
    ask_chunks,
    begin_push,
    build_pack,
    commit,
    index_bytes,
    pull,
    pull_urls,
    put_index,
    upload_chunks,
    verify,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("openapi-conformance")]

SEED = 20_260_601
# Examples per operation and generation mode (the coverage phase adds its boundary cases to these), so
# that each backend's whole run stays under 90 s on 2 cores: chalice local answers ~8x slower than the
# embedded server, and an anonymous caller gets the same 401 whatever the request says.
MAX_EXAMPLES = {
    ("embedded", "super_user"): 40,
    ("embedded", "anonymous"): 10,
    ("aws-http", "super_user"): 6,
    ("aws-http", "anonymous"): 3,
}
API_GATEWAY_METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}
CONFORMANCE_BACKENDS = [name for name in ("embedded", "aws-http") if name in BACKENDS]

# What the server answers to a request the document calls valid, besides 2xx: 410 is a state (the
# version was revoked by an earlier request of the same run), not a refusal of the request's data.
POSITIVE_STATUSES = ["2xx", "401", "403", "404", "409", "410", "429"]

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "generation": {
        "deterministic": True,
        "database": "none",
        "mode": "all",
        "no-shrink": True,
    },
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    "checks": {
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        "positive_data_acceptance": {"enabled": True, "expected-statuses": POSITIVE_STATUSES},
        "missing_required_header": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
        "use_after_free": {"enabled": True},
        "ensure_resource_availability": {"enabled": True},
        "ignored_auth": {"enabled": True},
    },
}


@dataclass
class Target:
    """One backend and one principal, as the fuzzer sees them."""

    name: str
    url: str
    token: Callable[..., str]
    principal: str
    cid: str = field(default_factory=lambda: f"oa-{uuid.uuid4().hex[:10]}")
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def api_url(self) -> str:
        return self.url + "/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        if self.principal == "anonymous":
            return {}
        return {"Authorization": f"Bearer {self.token('oa-root', ['SUPER_USER'])}"}

    def prepare(self, case: schemathesis.Case) -> None:
        """Keep the run to its own data and away from what other tests share (see the module doc)."""
        positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
        if positive and isinstance(case.path_parameters, dict) and isinstance(case.path_parameters.get("id"), str):
            case.path_parameters["id"] = self._own(case.path_parameters["id"])
        body = case.body
        if positive and isinstance(body, dict) and isinstance(body.get("catalog_id"), str):
            body["catalog_id"] = self._own(body["catalog_id"])
        if case.operation.path == "/api/v1/admin/gc":
            if body is None or isinstance(body, NotSet):
                case.body = {"dry_run": True}
            elif isinstance(body, dict) and body.get("dry_run", False) is False:
                body["dry_run"] = True  # valid either way: the verdict stays the same, nothing is deleted
        # An opaque cursor is valid only as a previous page's next_cursor: give one.
        if positive and isinstance(case.query, dict) and "cursor" in case.query:
            case.query["cursor"] = encode_cursor(ManifestKey(self.cid, "1.0", "x86_64"))

    def _own(self, value: str) -> str:
        return f"{self.cid}-{value.lower()}"[:128]


@pytest.fixture(scope="module")
def private_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    secret = "openapi-" + secrets.token_hex(24)
    tmp: Path = tmp_path_factory.mktemp("openapi-embedded")
    server = start_embedded(
        tmp / "catalog",
        env={"PDCAT_JWT_SECRET": secret, "PDCAT_ADMIN_PASSWORD": secrets.token_hex(12), "PDCAT_LOG_LEVEL": "ERROR"},
    )
    try:
        yield server, secret
    finally:
        server.stop()


def _target(request: pytest.FixtureRequest, backend_name: str, principal: str) -> Target:
    if backend_name == "embedded":
        server, secret = request.getfixturevalue("private_embedded")
        return Target(
            "embedded",
            server.url,
            lambda subject, roles: issue_token(secret, subject, roles, [], 3600)[0],
            principal,
        )
    backend = request.getfixturevalue("started_backends")(backend_name)
    return Target(backend_name, backend.url, lambda subject, roles: backend.token(subject, roles), principal)


def _schema(*, with_security_parameters: bool, max_examples: int, coverage: bool) -> Any:
    """The document of the route table every backend serves (the contract suite checks that the served
    one lists exactly these routes), loaded as schemathesis sees it."""
    config = schemathesis.Config.from_dict(
        {**CONFIG, "phases": {**CONFIG["phases"], "coverage": {"enabled": coverage}}}
    )
    config.projects.default.generation.update(
        with_security_parameters=with_security_parameters, max_examples=max_examples
    )
    document = openapi_document(
        build_routes(cast(CatalogService, None), token_issuer=lambda u, p: {}, token_refresher=lambda w, a: {})
    )
    return schemathesis.openapi.from_dict(document, config=config)


@pytest.fixture(scope="module")
def targets(request: pytest.FixtureRequest) -> Callable[[str, str], Target]:
    """One :class:`Target` per backend and principal, made on first use."""
    made: dict[tuple[str, str], Target] = {}

    def get(backend_name: str, principal: str) -> Target:
        if (backend_name, principal) not in made:
            made[backend_name, principal] = _target(request, backend_name, principal)
        return made[backend_name, principal]

    return get


def _conformance_test(backend_name: str, principal: str) -> Callable[..., None]:
    """Every operation of the document against one backend as one principal. As a SUPER_USER our token
    only (a made-up X-Api-Key beside it would be refused as two identities); anonymous, none of ours:
    schemathesis makes up its own credentials, or sends none, and every one must be refused."""
    anonymous = principal == "anonymous"
    # The coverage phase (every boundary value of every field) is for a caller whose requests are read;
    # an anonymous one is refused before its request is looked at.
    schema = _schema(
        with_security_parameters=anonymous, max_examples=MAX_EXAMPLES[backend_name, principal], coverage=not anonymous
    )

    def test(case: schemathesis.Case, targets: Callable[[str, str], Target], backend: str, principal: str) -> None:
        _run(case, targets(backend, principal))

    test.__name__ = test.__qualname__ = "test_every_operation_conforms"
    # parametrized, so that each operation's item is named after it, the backend and the principal
    test = pytest.mark.parametrize(
        ("backend", "principal"), [(backend_name, principal)], ids=[f"{backend_name}-{principal}"]
    )(test)
    test = schema.parametrize()(test)
    return test


def _run(case: schemathesis.Case, target: Target) -> None:
    if case.operation.path in ("/api/v1/auth/token", "/api/v1/auth/refresh") and target.name != "embedded":
        pytest.skip("only the embedded server logs users in with a password")
    if target.name.startswith("aws") and case.method.upper() not in API_GATEWAY_METHODS:
        return  # API Gateway (and chalice local, which answers 501) has no such method: not the contract's
    if _walks_shared_store(case, target):
        return
    target.prepare(case)
    response = case.call(base_url=target.url, session=target.session, headers=target.headers, timeout=60)
    case.validate_response(
        response,
        headers=target.headers,
        transport_kwargs={"base_url": target.url, "session": target.session, "headers": target.headers},
    )


_GC_WALKED: set[str] = set()


def _walks_shared_store(case: schemathesis.Case, target: Target) -> bool:
    """A valid ``/admin/gc`` on a shared backend walks every index the whole suite stored (one call up to
    its 20 s budget; 78 s for the operation's examples). One such walk per backend checks the answer, as
    on every backend ``test_real_push_and_pull_answers_match_the_document`` does; invalid requests, refused
    before any walk, all run."""
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    if target.name == "embedded" or case.operation.path != "/api/v1/admin/gc" or not positive:
        return False
    if target.principal == "anonymous" or target.name not in _GC_WALKED:
        _GC_WALKED.add(target.name)
        return False
    return True


for _backend in CONFORMANCE_BACKENDS:
    for _principal in ("super_user", "anonymous"):
        _test = _conformance_test(_backend, _principal)
        globals()[f"test_every_operation_conforms_{_backend.replace('-', '_')}_{_principal}"] = _test


@pytest.mark.parametrize("backend_name", CONFORMANCE_BACKENDS)
def test_real_push_and_pull_answers_match_the_document(request: pytest.FixtureRequest, backend_name: str) -> None:
    """The answers random requests rarely reach (a committed push, a pull, its URLs, API keys, gc),
    each validated against the served document."""
    t = _target(request, backend_name, "super_user")
    document = httpx.get(t.api_url + "/openapi.json", timeout=30).json()
    loaded = schemathesis.openapi.from_dict(document)
    cid, version, arch = t.cid, "1.0", "x86_64"
    m = "/api/v1/catalog/{id}/{version}/{arch}"
    started = time.monotonic()

    def check(method: str, path: str, response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, (method, path, response.status_code, response.text)
        loaded[path][method].validate_response(response)
        json_body = response.content and response.headers.get("content-type", "").startswith("application/json")
        return response.json() if json_body else {}

    with httpx.Client(base_url=t.api_url, headers=t.headers, timeout=60) as c:
        pack = build_pack({"disk.hdd": b"conformance" * 5000, "config.pvs": b"<xml/>"})
        session = check("POST", m + "/push", begin_push(c, cid, version, arch, pack, tags=["oa"]), 201)
        put_index(c, session, index_bytes(pack))
        asked = check(
            "POST", "/api/v1/uploads/{upload_id}/chunks", ask_chunks(c, session["upload_id"], pack.digests), 200
        )
        upload_chunks(asked["urls"], pack.chunks, asked["put_headers"])
        check("POST", "/api/v1/uploads/{upload_id}/verify", verify(c, session["upload_id"], pack.digests), 200)
        check("POST", "/api/v1/uploads/{upload_id}/commit", commit(c, session["upload_id"]), 200)
        check("GET", m, c.get(f"/catalog/{cid}/{version}/{arch}"), 200)
        check("GET", "/api/v1/catalog/{id}", c.get(f"/catalog/{cid}"), 200)
        check("GET", "/api/v1/catalog/{id}/{version}", c.get(f"/catalog/{cid}/latest"), 200)
        page = check("GET", "/api/v1/catalog", c.get("/catalog", params={"tag": "oa", "limit": "1"}), 200)
        if page["next_cursor"]:
            check("GET", "/api/v1/catalog", c.get("/catalog", params={"cursor": page["next_cursor"]}), 200)
        check("POST", m + "/pull", pull(c, cid, version, arch), 200)
        check("POST", m + "/pull/urls", pull_urls(c, cid, version, arch, pack.digests), 200)
        report = c.post(f"/catalog/{cid}/{version}/{arch}/pull/report", json={"digests": pack.digests[:1]})
        check("POST", m + "/pull/report", report, 200)
        check("PATCH", m + "/tags", c.patch(f"/catalog/{cid}/{version}/{arch}/tags", json={"tags": ["x"]}), 200)
        check("PUT", m + "/metadata", c.put(f"/catalog/{cid}/{version}/{arch}/metadata", json={"vm_type": "pvm"}), 200)
        check("PATCH", m + "/taint", c.patch(f"/catalog/{cid}/{version}/{arch}/taint"), 200)
        check("POST", m + "/pull", pull(c, cid, version, arch), 409)
        check("PATCH", m + "/untaint", c.patch(f"/catalog/{cid}/{version}/{arch}/untaint"), 200)
        check("GET", "/api/v1/auth/whoami", c.get("/auth/whoami"), 200)
        key = check("POST", "/api/v1/auth/api-keys", c.post("/auth/api-keys", json={"roles": ["USER"]}), 201)
        check("GET", "/api/v1/auth/api-keys", c.get("/auth/api-keys"), 200)
        check("DELETE", "/api/v1/auth/api-keys/{key_id}", c.delete(f"/auth/api-keys/{key['id']}"), 200)
        check("POST", "/api/v1/admin/gc", c.post("/admin/gc", json={"dry_run": True}), 200)
        check("GET", "/api/v1/health", c.get("/health"), 200)
        check("GET", "/api/v1/openapi.json", c.get("/openapi.json"), 200)
        check("GET", "/api/v1/docs", c.get("/docs"), 200)
        check("PATCH", m + "/revoke", c.patch(f"/catalog/{cid}/{version}/{arch}/revoke"), 200)
        check("POST", m + "/pull", pull(c, cid, version, arch), 410)
        check("DELETE", m, c.delete(f"/catalog/{cid}/{version}/{arch}", params={"purge": "true"}), 204)
        if backend_name == "embedded":
            check("POST", "/api/v1/auth/token", c.post("/auth/token", json={"username": 1, "password": "x"}), 400)
    assert time.monotonic() - started < 60

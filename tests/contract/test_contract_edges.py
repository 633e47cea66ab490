"""Edges the OpenAPI fuzzing found, kept closed on every backend: the server accepts what the document
calls valid and refuses what it calls invalid."""

from __future__ import annotations

import hashlib

from tests.contract.helpers import CHUNK_SIZE, assert_error, build_pack, index_bytes, manifest_path


def test_whole_numbers_written_with_a_fraction_are_integers(publisher, admin, cid):
    data = index_bytes(build_pack({"d": b"x" * 10}))
    body = {"chunk_size": 4096.0}
    r = publisher.post(f"{manifest_path(cid, '1.0', 'x86_64')}/push", json=body)
    assert r.status_code == 201, r.text
    declared = {"index_digest": hashlib.sha256(data).hexdigest(), "index_size": float(len(data))}
    assert publisher.post(f"/uploads/{r.json()['upload_id']}/index", json=declared).status_code == 200
    assert admin.post("/auth/api-keys", json={"roles": ["USER"], "expires_in_days": 30.0}).status_code == 201
    assert_error(
        publisher.post(f"{manifest_path(cid, '2.0', 'x86_64')}/push", json={**body, "chunk_size": 4096.5}),
        400,
        "invalid_input",
    )


def test_a_body_of_blanks_is_not_an_empty_object(backend, admin):
    r = backend.raw(
        "POST",
        "/api/v1/auth/api-keys",
        headers={
            "Authorization": f"Bearer {backend.token('alice', roles=['ADMIN'])}",
            "Content-Type": "application/json",
        },
        body=b" \t\n",
    )
    assert r.status_code == 400, r.text


def test_the_import_path_is_the_import_route_for_every_method(admin):
    for method in ("GET", "DELETE"):
        r = admin.request(method, "/catalog/import")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == "POST"
    assert_error(admin.post("/catalog/import/1.0/x86_64/push", json={}), 400, "invalid_input")


def test_an_alias_and_its_field_together_are_refused(publisher, cid):
    body = {"chunk_size": CHUNK_SIZE}
    r = publisher.post(
        f"{manifest_path(cid, '1.0', 'x86_64')}/push", json={**body, "required_claims": [], "claims": [None]}
    )
    assert_error(r, 400, "invalid_input")


def test_gc_and_commit_take_no_metadata(admin):
    assert_error(admin.post("/admin/gc", json={"dry_run": True, "description": "x"}), 400, "invalid_input")
    assert_error(admin.post("/uploads/x/commit", json={"description": "x"}), 400, "invalid_input")

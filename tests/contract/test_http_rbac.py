"""RBAC: per-manifest visibility (required roles / claims) and the claim each route needs."""

from __future__ import annotations

import uuid

import pytest

from tests.contract.helpers import (
    Pack,
    assert_error,
    begin_push,
    build_pack,
    commit,
    declaration,
    index_bytes,
    push_empty,
    push_pack,
    put_index,
    send_chunks,
)

EMPTY = Pack({"chunk_size": 4096, "files": []})

# version -> (required_roles, required_claims)
RESTRICTIONS: dict[str, tuple[list[str], list[str]]] = {
    "open": ([], []),
    "qa": (["QA"], []),
    "qa-or-dev": (["QA", "DEV"], []),
    "team-x": ([], ["TEAM_X"]),
    "team-x-or-y": ([], ["TEAM_X", "TEAM_Y"]),
    "qa-and-team-x": (["QA"], ["TEAM_X"]),
    "users": (["USER"], []),
    "publishers": (["PUBLISHER"], []),
    "admins": (["ADMIN"], []),
    "pullers": ([], ["PULL_CATALOG_MANIFEST"]),
}
ALL = set(RESTRICTIONS)
BASE = {"open", "users", "pullers"}

# (roles, claims) -> versions visible
PRINCIPALS: list[tuple[list[str], list[str], set[str]]] = [
    (["USER"], [], BASE),
    (["USER", "QA"], [], BASE | {"qa", "qa-or-dev"}),
    (["user", "dev"], [], BASE | {"qa-or-dev"}),
    (["USER"], ["TEAM_X"], BASE | {"team-x", "team-x-or-y"}),
    (["USER"], ["team_y"], BASE | {"team-x-or-y"}),
    (["USER", "QA"], ["TEAM_X"], BASE | {"qa", "qa-or-dev", "team-x", "team-x-or-y", "qa-and-team-x"}),
    (["USER", "DEV"], ["TEAM_X"], BASE | {"qa-or-dev", "team-x", "team-x-or-y"}),
    (["PUBLISHER"], [], BASE | {"publishers"}),
    (["ADMIN"], [], BASE | {"publishers", "admins"}),
    (["SUPER_USER"], [], ALL),
    ([], ["LIST_CATALOG_MANIFEST", "PULL_CATALOG_MANIFEST"], {"open", "pullers"}),
]


def _populate(backend, cid: str) -> str:
    tag = f"rbac-{cid}"
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        for version, (roles, claims) in RESTRICTIONS.items():
            push_pack(
                su, cid, version, "x86_64", {"f": version.encode()},
                required_roles=roles, required_claims=claims, tags=[tag],
            )  # fmt: skip
    return cid


@pytest.fixture(scope="module")
def shared_restricted(backend) -> str:
    """Read-only: one set of restricted manifests for every principal of ``test_visibility``."""
    return _populate(backend, f"t-rbac-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def restricted(backend, cid) -> str:
    return _populate(backend, cid)


@pytest.mark.parametrize(
    ("roles", "claims", "visible"),
    PRINCIPALS,
    ids=[f"{'+'.join(r) or '-'}/{'+'.join(c) or '-'}" for r, c, _ in PRINCIPALS],
)
def test_visibility(backend, shared_restricted, roles, claims, visible):
    cid = shared_restricted
    with backend.http(roles=roles, claims=claims, subject="viewer") as c:
        r = c.get(f"/catalog/{cid}")
        assert r.status_code == 200, r.text
        assert {m["version"] for m in r.json()["items"]} == visible

        listed = c.get("/catalog", params={"tag": f"rbac-{cid}", "limit": "1000"})
        assert listed.status_code == 200
        assert {m["version"] for m in listed.json()["items"]} == visible
        assert listed.json()["next_cursor"] is None

        for version in sorted(ALL):
            one = c.get(f"/catalog/{cid}/{version}/x86_64")
            by_version = c.get(f"/catalog/{cid}/{version}")
            pulled = c.post(f"/catalog/{cid}/{version}/x86_64/pull")
            if version in visible:
                assert one.status_code == 200, (version, one.text)
                assert by_version.status_code == 200
                assert pulled.status_code == 200, (version, pulled.text)
            else:
                # exactly as if it did not exist
                missing = c.get(f"/catalog/{cid}/no-such-{version}/x86_64")
                assert_error(one, 404, "not_found")
                assert_error(by_version, 404, "not_found")
                assert_error(pulled, 404, "not_found")
                assert_error(missing, 404, "not_found")


def test_invisible_manifests_answer_404_to_every_action(backend, restricted):
    cid = restricted
    with backend.http(roles=["ADMIN"], subject="admin-without-qa") as c:
        m = f"/catalog/{cid}/qa/x86_64"
        assert_error(c.get(m), 404, "not_found")
        assert_error(c.patch(m + "/taint"), 404, "not_found")
        assert_error(c.patch(m + "/untaint"), 404, "not_found")
        assert_error(c.patch(m + "/revoke"), 404, "not_found")
        assert_error(c.patch(m + "/tags", json={"tags": ["x"]}), 404, "not_found")
        assert_error(c.request("DELETE", m + "/roles", json={"roles": ["QA"]}), 404, "not_found")
        assert_error(c.patch(m + "/claims", json={"claims": ["X"]}), 404, "not_found")
        assert_error(c.put(m + "/metadata", json={"description": "x"}), 404, "not_found")
        assert_error(c.post(m + "/pull/urls", json={"digests": []}), 404, "not_found")
        assert_error(c.delete(m), 404, "not_found")
        assert_error(c.delete(f"/catalog/{cid}/qa"), 404, "not_found")
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        shown = su.get(f"/catalog/{cid}/qa/x86_64").json()
        assert shown["tainted"] is False and shown["revoked"] is False
        assert shown["required_roles"] == ["QA"]
        assert shown["tags"] == [f"rbac-{cid}"]
        # deleting the whole id as someone who sees only some versions leaves the others
    with backend.http(roles=["ADMIN"], subject="admin-without-qa") as c:
        assert c.delete(f"/catalog/{cid}").status_code == 204
        assert_error(c.get(f"/catalog/{cid}"), 404, "not_found")
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        left = {m["version"] for m in su.get(f"/catalog/{cid}").json()["items"]}
        assert left == {"qa", "qa-or-dev", "team-x", "team-x-or-y", "qa-and-team-x"}


def test_latest_only_considers_visible_versions(backend, cid):
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        push_empty(su, cid, "1.0")
        push_empty(su, cid, "2.0", required_roles=["QA"])
    with backend.http(roles=["USER"]) as c:
        assert c.get(f"/catalog/{cid}/latest/x86_64").json()["version"] == "1.0"
        assert [m["version"] for m in c.get(f"/catalog/{cid}/latest").json()["items"]] == ["1.0"]
    with backend.http(roles=["USER", "QA"]) as c:
        assert c.get(f"/catalog/{cid}/latest/x86_64").json()["version"] == "2.0"


@pytest.mark.parametrize("role", ["USER", "PUBLISHER"])
def test_missing_claims_are_403(backend, cid, role):
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        push_pack(su, cid, "1.0", "x86_64", {"f": b"x"})
        upload = begin_push(su, cid, "2.0", "x86_64", EMPTY)
        assert upload.status_code == 201, upload.text
        upload_id = upload.json()["upload_id"]
    digests = {"digests": ["ab" * 32]}
    m = f"/catalog/{cid}/1.0/x86_64"
    with backend.http(roles=[role], subject="limited") as c:
        # the claim is checked before anything else: even a missing manifest answers 403
        for path in (m, f"/catalog/{cid}/9.9/x86_64"):
            assert_error(c.patch(path + "/taint"), 403, "forbidden")
            assert_error(c.patch(path + "/untaint"), 403, "forbidden")
            assert_error(c.patch(path + "/revoke"), 403, "forbidden")
            assert_error(c.delete(path), 403, "forbidden")
        assert_error(c.delete(f"/catalog/{cid}"), 403, "forbidden")
        assert_error(c.delete(f"/catalog/{cid}/1.0"), 403, "forbidden")
        assert_error(c.get("/auth/api-keys"), 403, "forbidden")
        assert_error(c.post("/auth/api-keys", json={}), 403, "forbidden")
        assert_error(c.delete("/auth/api-keys/0000000000000000"), 403, "forbidden")
        if role == "USER":
            assert_error(c.post(m + "/push", json=declaration(EMPTY)), 403, "forbidden")
            assert_error(c.post(f"/catalog/{cid}/3.0/x86_64/push", json={}), 403, "forbidden")
            assert_error(c.post(f"/uploads/{upload_id}/commit", json={}), 403, "forbidden")
            assert_error(c.post(f"/uploads/{upload_id}/chunks", json=digests), 403, "forbidden")
            assert_error(c.post(f"/uploads/{upload_id}/verify", json=digests), 403, "forbidden")
            assert_error(c.delete(f"/uploads/{upload_id}"), 403, "forbidden")
            assert_error(c.patch(m + "/tags", json={"tags": ["x"]}), 403, "forbidden")
            assert_error(c.request("DELETE", m + "/tags", json={"tags": ["x"]}), 403, "forbidden")
            assert_error(c.patch(m + "/roles", json={"roles": ["X"]}), 403, "forbidden")
            assert_error(c.patch(m + "/claims", json={"claims": ["X"]}), 403, "forbidden")
            assert_error(c.put(m + "/metadata", json={"description": "x"}), 403, "forbidden")
            body = {"catalog_id": cid, "version": "1.0", "architecture": "x86_64"}
            assert_error(c.post("/catalog/import", json=body), 403, "forbidden")
        assert c.post(m + "/pull").status_code == 200
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        shown = su.get(m).json()
        assert (shown["tainted"], shown["revoked"], shown["tags"]) == (False, False, [])
        assert su.get(f"/catalog/{cid}/2.0/x86_64").json()["upload_in_progress"] is True


def test_pull_claim_is_checked_by_the_server(backend, cid):
    with backend.http(roles=["ADMIN"], subject="a") as c:
        push_pack(c, cid, "1.0", "x86_64", {"f": b"x"})
    with backend.http(claims=["LIST_CATALOG_MANIFEST"], subject="lister") as c:
        assert c.get(f"/catalog/{cid}/1.0/x86_64").status_code == 200
        assert_error(c.post(f"/catalog/{cid}/1.0/x86_64/pull"), 403, "forbidden")
        assert_error(c.post(f"/catalog/{cid}/1.0/x86_64/pull/urls", json={"digests": []}), 403, "forbidden")
        report = {"digests": ["ab" * 32]}
        assert_error(c.post(f"/catalog/{cid}/1.0/x86_64/pull/report", json=report), 403, "forbidden")
    with backend.http(claims=["PULL_CATALOG_MANIFEST"], subject="puller") as c:
        assert_error(c.get(f"/catalog/{cid}/1.0/x86_64"), 403, "forbidden")
        assert_error(c.get("/catalog"), 403, "forbidden")
        assert c.post(f"/catalog/{cid}/1.0/x86_64/pull").status_code == 200
    with backend.http(roles=["ADMIN"], subject="a") as c:
        assert c.get(f"/catalog/{cid}/1.0/x86_64").json()["download_count"] == 1


def test_a_principal_without_any_claim(backend, cid):
    with backend.http(subject="nobody") as c:
        who = c.get("/auth/whoami")
        assert who.status_code == 200
        assert who.json()["subject"] == "nobody"
        assert who.json()["roles"] == [] and who.json()["claims"] == []
        assert_error(c.get("/catalog"), 403, "forbidden")
        assert_error(c.get(f"/catalog/{cid}"), 403, "forbidden")
        assert_error(c.post(f"/catalog/{cid}/1.0/x86_64/pull"), 403, "forbidden")


def test_claims_granted_directly_work_like_roles(backend, cid):
    claims = ["LIST_CATALOG_MANIFEST", "PUSH_CATALOG_MANIFEST", "TAINT_CATALOG_MANIFEST"]
    with backend.http(claims=claims, subject="direct") as c:
        push_empty(c, cid, "1.0")
        assert c.patch(f"/catalog/{cid}/1.0/x86_64/taint").json()["tainted_by"] == "direct"
        assert_error(c.patch(f"/catalog/{cid}/1.0/x86_64/revoke"), 403, "forbidden")
        assert_error(c.delete(f"/catalog/{cid}/1.0/x86_64"), 403, "forbidden")


def test_a_pusher_may_restrict_a_version_to_roles_they_do_not_hold(backend, cid):
    """A CI publisher pushes a QA-only image: the push completes, and then only QA can see it."""
    pack = build_pack({"f": b"qa-only" * 1000})
    with backend.http(roles=["PUBLISHER"], subject="ci") as ci:
        first = begin_push(ci, cid, "1.0", "x86_64", pack, required_roles=["QA"])
        assert first.status_code == 201, first.text
        # hidden from the pusher already, yet their own push resumes...
        assert_error(ci.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
        second = begin_push(ci, cid, "1.0", "x86_64", pack, required_roles=["QA"])
        assert second.status_code == 201, second.text
        assert_error(commit(ci, first.json()["upload_id"]), 404, "not_found")
        # ...while nobody else who cannot see it learns that it exists (a decoy session, never committed)
        with backend.http(roles=["PUBLISHER"], subject="other") as other:
            decoy = begin_push(other, cid, "1.0", "x86_64", pack)
            assert decoy.status_code == 201, decoy.text
            put_index(other, decoy.json(), index_bytes(pack))
            assert_error(commit(other, decoy.json()["upload_id"]), 409, "conflict")
            assert_error(commit(other, second.json()["upload_id"]), 404, "not_found")
            other_chunks = other.post(f"/uploads/{second.json()['upload_id']}/chunks", json={"digests": pack.digests})
            assert_error(other_chunks, 404, "not_found")
        put_index(ci, second.json(), index_bytes(pack))
        send_chunks(ci, second.json()["upload_id"], pack)
        done = commit(ci, second.json()["upload_id"])
        assert done.status_code == 200, done.text
        assert done.json()["required_roles"] == ["QA"]
        assert_error(ci.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
        assert begin_push(ci, cid, "1.0", "x86_64", pack).status_code == 201  # hidden now: a decoy too
    with backend.http(roles=["USER", "QA"], subject="qa") as qa:
        assert qa.post(f"/catalog/{cid}/1.0/x86_64/pull").status_code == 200

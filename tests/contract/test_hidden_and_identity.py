"""A caller who cannot see a manifest gets exactly what it would get if the manifest did not exist,
and an identity no other caller can claim owns each upload and each API key (every backend).

The attacker here is a PUBLISHER or an ADMIN without the role a version requires ("QA"): they may
push, import and list, but the hidden version must be indistinguishable from a free identity.
"""

from __future__ import annotations

import hashlib

import httpx

from tests.contract.helpers import (
    assert_error,
    begin_push,
    build_pack,
    commit,
    index_bytes,
    push_empty,
    push_pack,
    put_index,
    send_chunks,
)

KIB4 = 4096


def _block(seed: int) -> bytes:
    return hashlib.sha256(b"hidden-%d" % seed).digest() * (KIB4 // 32)


def _full_push(client: httpx.Client, cid: str, version: str, files: dict[str, bytes]) -> tuple[int, dict[str, object]]:
    """Begin, index, chunks, verify, commit: the status of the commit and what each step answered."""
    pack = build_pack(files)
    r = begin_push(client, cid, version, "x86_64", pack)
    assert r.status_code == 201, r.text
    session = r.json()
    put_index(client, session, index_bytes(pack))
    sent = send_chunks(client, session["upload_id"], pack)
    c = commit(client, session["upload_id"])
    return c.status_code, {"begin": session, "sent": sent, "commit": c.json()}


# ---- push and import to a hidden identity ------------------------------------------------------------
def test_push_to_a_hidden_version_looks_like_a_push_to_a_free_identity(backend, su, cid):
    secret = {"disk": _block(1) + _block(2)}
    push_pack(su, cid, "1.0", "x86_64", secret, required_roles=["QA"])
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        # a free identity and the hidden one answer alike, step by step, until the very last
        free_status, free = _full_push(mallory, cid, "2.0", secret)
        hidden_status, hidden = _full_push(mallory, cid, "1.0", secret)
        assert free_status == 200
        assert set(free["begin"]) == set(hidden["begin"])  # type: ignore[arg-type]
        # no dedup for a caller who cannot see every version: both uploaded every chunk
        assert hidden["sent"]["stored"] == []  # type: ignore[index]
        assert sorted(hidden["sent"]["uploaded"]) == sorted(build_pack(secret).digests)  # type: ignore[index]
        assert hidden["sent"]["verdict"]["corrupt"] == []  # type: ignore[index]
        # the commit fails as a lost race does, and the hidden version is untouched
        assert hidden_status == 409
        assert_error(mallory.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    kept = su.get(f"/catalog/{cid}/1.0/x86_64").json()
    assert kept["required_roles"] == ["QA"] and kept["created_by"] == "root" and kept["status"] == "ready"


def test_dedup_tells_nothing_about_a_hidden_versions_content(backend, su, cid):
    secret = {"disk": _block(10)}
    push_pack(su, cid, "1.0", "x86_64", secret, required_roles=["QA"])
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        status, steps = _full_push(mallory, cid, "2.0", secret)
        assert status == 200
        assert steps["sent"]["stored"] == []  # type: ignore[index]
    with backend.http(roles=["PUBLISHER", "QA"], subject="quinn") as quinn:  # sees every version: dedup
        status, steps = _full_push(quinn, cid, "3.0", secret)
        assert status == 200
        assert steps["sent"]["stored"] == build_pack(secret).digests  # type: ignore[index]


def test_verify_tells_nothing_of_what_a_session_never_staged(backend, su, cid):
    """Asking the server to verify a hidden version's chunks without uploading them: "missing", as
    for bytes stored nowhere, so neither the answer nor a commit built on it reveals the content."""
    secret = {"disk": _block(30) + _block(31)}
    push_pack(su, cid, "1.0", "x86_64", secret, required_roles=["QA"])
    digests = build_pack(secret).digests
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        for version in ("1.0", "2.0"):  # the hidden identity's decoy, and a free one
            pack = build_pack(secret)
            session = begin_push(mallory, cid, version, "x86_64", pack).json()
            r = mallory.post(f"/uploads/{session['upload_id']}/verify", json={"digests": digests})
            assert r.status_code == 200, r.text
            assert r.json() == {"verified": [], "missing": digests, "corrupt": []}
            put_index(mallory, session, index_bytes(pack))
            assert commit(mallory, session["upload_id"]).status_code == 409  # nothing it may commit
            # what the session uploads itself verifies, and verifying it again still answers verified
            sent = send_chunks(mallory, session["upload_id"], pack)
            assert sorted(sent["verdict"]["verified"]) == sorted(digests)
            again = mallory.post(f"/uploads/{session['upload_id']}/verify", json={"digests": digests}).json()
            assert sorted(again["verified"]) == sorted(digests) and again["missing"] == []
        assert commit(mallory, session["upload_id"]).status_code == 200  # the free identity's push
    with backend.http(roles=["PUBLISHER", "QA"], subject="quinn") as quinn:  # sees every version
        session = begin_push(quinn, cid, "3.0", "x86_64", build_pack(secret)).json()
        r = quinn.post(f"/uploads/{session['upload_id']}/verify", json={"digests": digests})
        assert sorted(r.json()["verified"]) == sorted(digests)  # dedup: stored already


def test_a_decoy_session_is_its_owners_alone_and_can_be_aborted(backend, su, cid):
    push_empty(su, cid, "1.0", required_roles=["QA"])
    pack = build_pack({"disk": _block(20)})
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        session = begin_push(mallory, cid, "1.0", "x86_64", pack).json()
        with backend.http(roles=["PUBLISHER"], subject="eve") as eve:
            for path in ("chunks", "verify"):
                r = eve.post(f"/uploads/{session['upload_id']}/{path}", json={"digests": pack.digests})
                assert_error(r, 404, "not_found")
            assert_error(commit(eve, session["upload_id"]), 404, "not_found")
        assert mallory.delete(f"/uploads/{session['upload_id']}").status_code == 204
        assert_error(commit(mallory, session["upload_id"]), 404, "not_found")
    assert su.get(f"/catalog/{cid}/1.0/x86_64").json()["status"] == "ready"


def test_import_to_a_hidden_version_answers_as_if_nothing_were_stored(backend, su, cid):
    push_empty(su, cid, "1.0", required_roles=["QA"])
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        for fmt in ("pdcat", "pdpack"):
            hidden = mallory.post(
                "/catalog/import", json={"catalog_id": cid, "version": "1.0", "architecture": "x86_64", "format": fmt}
            )
            free = mallory.post(
                "/catalog/import", json={"catalog_id": cid, "version": "9.9", "architecture": "x86_64", "format": fmt}
            )
            assert hidden.status_code == free.status_code == 404, (fmt, hidden.text, free.text)
            assert hidden.json()["error"]["code"] == free.json()["error"]["code"]


def test_a_deleted_hidden_version_cannot_be_pushed_again_by_someone_who_could_not_see_it(backend, su, cid):
    push_empty(su, cid, "1.0", required_roles=["QA"])
    assert su.delete(f"/catalog/{cid}/1.0/x86_64").status_code == 204
    with backend.http(roles=["PUBLISHER"], subject="mallory") as mallory:
        status, _ = _full_push(mallory, cid, "1.0", {"disk": _block(30)})
        assert status == 409
    with backend.http(roles=["PUBLISHER", "QA"], subject="quinn") as quinn:
        status, steps = _full_push(quinn, cid, "1.0", {"disk": _block(30)})
        assert status == 200
        assert steps["commit"]["required_roles"] == ["QA"]  # type: ignore[index]


# ---- list pages --------------------------------------------------------------------------------------
def test_a_next_cursor_never_leads_to_an_empty_page(backend, su, cid):
    for i in range(3):
        push_empty(su, cid, f"1.{i}")
    for i in range(4):
        push_empty(su, cid, f"2.{i}", required_roles=["QA"])  # sorted after the visible ones
    with backend.http(roles=["USER"], subject="ursula") as user:
        page = user.get("/catalog", params={"limit": 3}).json()
        mine = [m for m in page["items"] if m["catalog_id"] == cid]
        # other tests share the backend: follow the cursor until this catalog is done
        seen = list(mine)
        cursor = page["next_cursor"]
        while cursor:
            page = user.get("/catalog", params={"limit": 3, "cursor": cursor}).json()
            assert page["items"], "a next_cursor led to an empty page"
            seen += [m for m in page["items"] if m["catalog_id"] == cid]
            cursor = page["next_cursor"]
        assert sorted(m["version"] for m in seen) == ["1.0", "1.1", "1.2"]


# ---- who owns what -----------------------------------------------------------------------------------
def test_an_api_key_cannot_be_minted_in_someone_elses_name(admin):
    assert_error(admin.post("/auth/api-keys", json={"subject": "carol"}), 400, "invalid_input")
    for name in ("", "a/b", "carol:x", "x" * 65, 5, " lead"):
        assert_error(admin.post("/auth/api-keys", json={"service_account": name}), 400, "invalid_input")


def test_keys_act_as_their_creator_or_as_the_creators_service_account(backend, admin):
    own = admin.post("/auth/api-keys", json={"roles": ["USER"]}).json()
    robot = admin.post("/auth/api-keys", json={"roles": ["USER"], "service_account": "ci-bot"}).json()
    assert own["subject"] == "alice-admin"
    assert robot["subject"] == "svc:alice-admin/ci-bot"
    for created in (own, robot):
        with backend.http(anonymous=True, headers={"X-Api-Key": created["key"]}) as k:
            assert k.get("/auth/whoami").json()["subject"] == created["subject"]


def test_an_admins_key_cannot_take_over_another_users_hidden_push(backend, admin, cid):
    pack = build_pack({"disk": _block(40)})
    with backend.http(roles=["PUBLISHER"], subject="carol") as carol:
        session = begin_push(carol, cid, "1.0", "x86_64", pack, required_roles=["QA"]).json()
        put_index(carol, session, index_bytes(pack))
        key = admin.post("/auth/api-keys", json={"roles": ["ADMIN"], "service_account": "carol"}).json()["key"]
        with backend.http(anonymous=True, headers={"X-Api-Key": key}) as k:
            assert_error(
                k.post(f"/uploads/{session['upload_id']}/chunks", json={"digests": pack.digests}), 404, "not_found"
            )
            assert_error(commit(k, session["upload_id"]), 404, "not_found")
            assert_error(k.delete(f"/uploads/{session['upload_id']}"), 404, "not_found")
        sent = send_chunks(carol, session["upload_id"], pack)
        assert not sent["verdict"]["corrupt"]
        done = commit(carol, session["upload_id"])
        assert done.status_code == 200 and done.json()["created_by"] == "carol"

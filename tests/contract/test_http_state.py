"""State changes: taint / untaint / revoke, delete and purge, tags / roles / claims, metadata."""

from __future__ import annotations

import hashlib

import httpx

from core.pack import PackIndex
from tests.contract.helpers import (
    ask_chunks,
    assert_error,
    begin_push,
    build_pack,
    commit,
    fetch_index,
    index_bytes,
    plain,
    pull,
    pull_urls,
    push_pack,
    put_index,
    race,
    upload_chunks,
    verify,
)


def _blocks(*seeds: int) -> bytes:
    return b"".join(hashlib.sha256(f"state-{s}".encode()).digest() * 128 for s in seeds)


def _chunk_urls(client: httpx.Client, cid: str, version: str, arch: str) -> dict[str, str]:
    """Pull a version: its index from storage (checked against the manifest), then a GET URL per chunk."""
    r = pull(client, cid, version, arch)
    assert r.status_code == 200, r.text
    digests = list(PackIndex.parse(fetch_index(r.json())).unique_digests())
    urls = pull_urls(client, cid, version, arch, digests)
    assert urls.status_code == 200, urls.text
    found: dict[str, str] = urls.json()["urls"]
    return found


def test_taint_untaint_rules(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"data"})
    m = f"/catalog/{cid}/1.0/x86_64"

    r = admin.patch(m + "/taint")
    assert r.status_code == 200, r.text
    tainted = r.json()
    assert tainted["tainted"] is True
    assert tainted["usable"] is False
    assert tainted["tainted_by"] == "alice-admin"
    assert tainted["tainted_at"]
    assert admin.get(m).json()["tainted"] is True

    assert_error(admin.patch(m + "/taint"), 409, "conflict")
    assert_error(pull(admin, cid, "1.0", "x86_64"), 409, "tainted")
    assert_error(admin.post(m + "/pull/urls", json={"digests": []}), 409, "tainted")

    r = admin.patch(m + "/untaint")
    assert r.status_code == 200, r.text
    untainted = r.json()
    assert untainted["tainted"] is False
    assert untainted["usable"] is True
    assert untainted["untainted_by"] == "alice-admin"
    assert untainted["untainted_at"] >= tainted["tainted_at"]
    assert_error(admin.patch(m + "/untaint"), 409, "conflict")
    assert pull(admin, cid, "1.0", "x86_64").status_code == 200

    assert_error(admin.patch(f"/catalog/{cid}/2.0/x86_64/taint"), 404, "not_found")
    assert_error(admin.patch(f"/catalog/{cid}/2.0/x86_64/untaint"), 404, "not_found")
    assert_error(admin.patch(f"/catalog/{cid}/2.0/x86_64/revoke"), 404, "not_found")


def test_revoke_is_permanent(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"data"})
    m = f"/catalog/{cid}/1.0/x86_64"
    assert admin.patch(m + "/taint").status_code == 200
    r = admin.patch(m + "/revoke")
    assert r.status_code == 200, r.text
    revoked = r.json()
    assert revoked["revoked"] is True
    assert revoked["revoked_by"] == "alice-admin"
    assert revoked["revoked_at"]
    assert revoked["usable"] is False

    assert_error(pull(admin, cid, "1.0", "x86_64"), 410, "revoked")
    assert_error(admin.post(m + "/pull/urls", json={"digests": []}), 410, "revoked")
    assert_error(admin.patch(m + "/untaint"), 410, "revoked")
    assert_error(admin.patch(m + "/taint"), 410, "revoked")
    assert_error(admin.patch(m + "/revoke"), 410, "revoked")
    # still listed (it exists), and still deletable
    assert admin.get(m).json()["revoked"] is True
    assert admin.delete(m).status_code == 204


def test_untainted_then_revoked_untainted_version(admin, cid):
    push_pack(admin, cid, "1.0", "arm64", {"d": b"data"})
    m = f"/catalog/{cid}/1.0/arm64"
    assert admin.patch(m + "/revoke").json()["tainted"] is False
    assert_error(admin.patch(m + "/taint"), 410, "revoked")
    assert_error(pull(admin, cid, "1.0", "arm64"), 410, "revoked")


def test_delete_one_manifest(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"x"})
    push_pack(admin, cid, "1.0", "arm64", {"d": b"y"})
    r = admin.delete(f"/catalog/{cid}/1.0/amd64")
    assert r.status_code == 204
    assert r.content == b""
    assert_error(admin.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    assert admin.get(f"/catalog/{cid}/1.0/arm64").status_code == 200
    assert_error(admin.delete(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")


def test_delete_a_version_removes_every_architecture(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"x"})
    push_pack(admin, cid, "1.0", "arm64", {"d": b"y"})
    push_pack(admin, cid, "2.0", "arm64", {"d": b"z"})
    assert admin.delete(f"/catalog/{cid}/1.0").status_code == 204
    assert_error(admin.get(f"/catalog/{cid}/1.0"), 404, "not_found")
    assert [m["version"] for m in admin.get(f"/catalog/{cid}").json()["items"]] == ["2.0"]
    assert_error(admin.delete(f"/catalog/{cid}/1.0"), 404, "not_found")
    assert admin.delete(f"/catalog/{cid}").status_code == 204
    assert_error(admin.get(f"/catalog/{cid}"), 404, "not_found")
    assert_error(admin.delete(f"/catalog/{cid}"), 404, "not_found")
    # latest is an alias for reading, never a target for delete
    assert_error(admin.delete(f"/catalog/{cid}/latest"), (400, 404))


def test_delete_leaves_a_tombstone_that_only_someone_who_could_see_it_pushes_again(backend, publisher, admin, cid):
    tag = f"tomb-{cid}"
    first = build_pack({"d": _blocks(10)})
    push_pack(publisher, cid, "1.0", "x86_64", first, tags=[tag])
    push_pack(publisher, cid, "2.0", "x86_64", {"d": _blocks(11)}, tags=[tag])
    m = f"/catalog/{cid}/1.0/x86_64"
    assert admin.delete(m).status_code == 204

    # the tombstone is invisible to every read and every action
    assert_error(publisher.get(m), 404, "not_found")
    assert_error(publisher.get(f"/catalog/{cid}/1.0"), 404, "not_found")
    assert [x["version"] for x in publisher.get(f"/catalog/{cid}").json()["items"]] == ["2.0"]
    listed = publisher.get("/catalog", params={"tag": tag, "limit": "1000"}).json()
    assert [x["version"] for x in listed["items"]] == ["2.0"]
    assert publisher.get(f"/catalog/{cid}/latest/x86_64").json()["version"] == "2.0"
    assert_error(pull(publisher, cid, "1.0", "x86_64"), 404, "not_found")
    assert_error(pull_urls(publisher, cid, "1.0", "x86_64", first.digests), 404, "not_found")
    assert_error(admin.patch(m + "/taint"), 404, "not_found")
    assert_error(admin.put(m + "/metadata", json={"description": "x"}), 404, "not_found")
    assert_error(admin.delete(m), 404, "not_found")

    # the same publisher pushes it again, without force; the chunks were kept (no purge)
    again = build_pack({"d": _blocks(10), "e": _blocks(12)})
    r = begin_push(publisher, cid, "1.0", "x86_64", again)
    assert r.status_code == 201, r.text
    session = r.json()
    put_index(publisher, session, index_bytes(again))
    asked = ask_chunks(publisher, session["upload_id"], again.digests).json()
    assert asked["stored"] == first.digests
    assert list(asked["urls"]) == [hashlib.sha256(_blocks(12)).hexdigest()]
    upload_chunks(asked["urls"], again.chunks, asked["put_headers"])
    assert verify(publisher, session["upload_id"], list(asked["urls"])).json()["missing"] == []
    done = commit(publisher, session["upload_id"])
    assert done.status_code == 200, done.text
    back = done.json()
    assert (back["status"], back["download_count"], back["created_by"]) == ("ready", 0, "paul-publisher")
    assert publisher.get(m).json() == back
    assert set(_chunk_urls(publisher, cid, "1.0", "x86_64")) == set(again.chunks)
    listed = publisher.get("/catalog", params={"tag": tag, "limit": "1000"}).json()
    assert sorted(x["version"] for x in listed["items"]) == ["2.0"]  # the tags went with the old version
    assert sorted(x["version"] for x in publisher.get(f"/catalog/{cid}").json()["items"]) == ["1.0", "2.0"]

    # a tombstone keeps its access rules: who could not see the version cannot take its identity...
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        push_pack(su, cid, "3.0", "x86_64", {"d": b"qa"}, required_roles=["QA"])
        assert su.delete(f"/catalog/{cid}/3.0/x86_64").status_code == 204
        # ...and a revoked identity stays burned after delete
        push_pack(su, cid, "4.0", "x86_64", {"d": b"burned"})
        assert su.patch(f"/catalog/{cid}/4.0/x86_64/revoke").status_code == 200
        assert su.delete(f"/catalog/{cid}/4.0/x86_64").status_code == 204
        burned = build_pack({"d": b"again"})
        assert_error(begin_push(su, cid, "4.0", "x86_64", burned), 410, "revoked")
        assert_error(begin_push(su, cid, "4.0", "x86_64", burned, force=True), 410, "revoked")
        body = {"catalog_id": cid, "version": "4.0", "architecture": "x86_64"}
        assert_error(su.post("/catalog/import", json=body), 410, "revoked")
    # (it looks like a free identity to them, up to a commit that fails as a lost race does)
    decoy_pack = build_pack({"d": b"x"})
    decoy = begin_push(publisher, cid, "3.0", "x86_64", decoy_pack)
    assert decoy.status_code == 201, decoy.text
    put_index(publisher, decoy.json(), index_bytes(decoy_pack))
    assert_error(commit(publisher, decoy.json()["upload_id"]), 409, "conflict")
    with backend.http(roles=["PUBLISHER", "QA"], subject="quinn-qa") as qa:
        replaced = push_pack(qa, cid, "3.0", "x86_64", {"d": b"qa again"})
        assert replaced["required_roles"] == ["QA"]
    assert_error(publisher.get(f"/catalog/{cid}/3.0/x86_64"), 404, "not_found")


def test_delete_with_purge_removes_only_unshared_chunks(admin, cid):
    shared, only_v1, only_v2 = _blocks(1), _blocks(2), _blocks(3)
    v1 = build_pack({"disk": shared + only_v1})
    push_pack(admin, cid, "1.0", "x86_64", v1)
    push_pack(admin, cid, "2.0", "x86_64", {"disk": shared + only_v2})
    urls = _chunk_urls(admin, cid, "1.0", "x86_64")
    shared_digest = hashlib.sha256(shared).hexdigest()
    only_v1_digest = hashlib.sha256(only_v1).hexdigest()
    assert set(urls) == {shared_digest, only_v1_digest}
    assert plain.get(urls[only_v1_digest]).status_code == 200

    assert admin.delete(f"/catalog/{cid}/1.0/x86_64", params={"purge": "true"}).status_code == 204

    gone = plain.get(urls[only_v1_digest])
    assert gone.status_code == 404, gone.status_code
    kept = plain.get(urls[shared_digest])
    assert kept.status_code == 200
    for digest, url in _chunk_urls(admin, cid, "2.0", "x86_64").items():
        assert plain.get(url).status_code == 200, digest
    # the purged version's stored index is gone too: nothing left to import
    body = {"catalog_id": cid, "version": "1.0", "architecture": "x86_64"}
    assert_error(admin.post("/catalog/import", json=body), 404, "not_found")
    assert_error(admin.delete(f"/catalog/{cid}/2.0", params={"purge": "maybe"}), 400, "invalid_input")


def test_delete_without_purge_keeps_the_chunks(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"disk": _blocks(4)})
    urls = _chunk_urls(admin, cid, "1.0", "x86_64")
    assert admin.delete(f"/catalog/{cid}", params={"purge": "false"}).status_code == 204
    for url in urls.values():
        assert plain.get(url).status_code == 200


def test_purge_of_a_whole_catalog_id(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"disk": _blocks(5)})
    push_pack(admin, cid, "2.0", "arm64", {"disk": _blocks(6)})
    urls = list(_chunk_urls(admin, cid, "1.0", "x86_64").values())
    urls += list(_chunk_urls(admin, cid, "2.0", "arm64").values())
    assert admin.delete(f"/catalog/{cid}", params={"purge": "true"}).status_code == 204
    for url in urls:
        assert plain.get(url).status_code == 404


def test_tags_roles_claims_are_edited_as_lists(admin, cid):
    push_pack(admin, cid, "1.0", "x86_64", {"d": b"x"}, tags=["a"])
    m = f"/catalog/{cid}/1.0/x86_64"

    r = admin.patch(m + "/tags", json={"tags": ["B", "c", "a"]})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["a", "b", "c"]
    r = admin.request("DELETE", m + "/tags", json={"tags": ["a", "zzz"]})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["b", "c"]

    r = admin.patch(m + "/roles", json={"roles": ["publisher", "QA"]})
    assert r.status_code == 200, r.text
    assert r.json()["required_roles"] == ["PUBLISHER", "QA"]
    r = admin.request("DELETE", m + "/roles", json={"roles": ["QA"]})
    assert r.json()["required_roles"] == ["PUBLISHER"]

    r = admin.patch(m + "/claims", json={"claims": ["PULL_CATALOG_MANIFEST", "X_TEAM"]})
    assert r.status_code == 200, r.text
    assert r.json()["required_claims"] == ["PULL_CATALOG_MANIFEST", "X_TEAM"]
    r = admin.request("DELETE", m + "/claims", json={"claims": ["X_TEAM"]})
    assert r.json()["required_claims"] == ["PULL_CATALOG_MANIFEST"]

    shown = admin.get(m).json()
    assert (shown["tags"], shown["required_roles"], shown["required_claims"]) == (
        ["b", "c"], ["PUBLISHER"], ["PULL_CATALOG_MANIFEST"],
    )  # fmt: skip
    assert shown["updated_at"] >= shown["created_at"]

    assert_error(admin.patch(m + "/tags", json={"roles": ["x"]}), 400, "invalid_input")
    assert_error(admin.patch(m + "/tags", json={"tags": "x"}), 400, "invalid_input")
    assert_error(admin.patch(m + "/tags", json={"tags": ["not a tag"]}), 400, "invalid_input")
    assert_error(admin.patch(m + "/roles", json={"roles": [5]}), 400, "invalid_input")
    assert_error(admin.patch(m + "/claims", json={"claims": None}), 400, "invalid_input")
    many = [f"t{i}" for i in range(60)]
    assert admin.patch(m + "/tags", json={"tags": many}).status_code == 200
    assert_error(admin.patch(m + "/tags", json={"tags": [f"u{i}" for i in range(10)]}), 400, "invalid_input")
    assert_error(admin.patch(f"/catalog/{cid}/9.9/x86_64/tags", json={"tags": ["a"]}), 404, "not_found")


def test_metadata_put_replaces_the_fields_present(admin, cid):
    push_pack(
        admin, cid, "1.0", "x86_64", {"d": b"x"},
        description="old", tags=["keep"], minimum_requirements={"cpu": 1, "memory_mb": 1024, "disk_mb": 10},
    )  # fmt: skip
    m = f"/catalog/{cid}/1.0/x86_64"
    r = admin.put(m + "/metadata", json={"description": "new", "vm_type": "macvm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["description"] == "new"
    assert body["vm_type"] == "macvm"
    assert body["tags"] == ["keep"]
    assert body["minimum_requirements"] == {"cpu": 1, "memory_mb": 1024, "disk_mb": 10}

    r = admin.put(
        m + "/metadata",
        json={"minimum_requirements": {"cpu": 4, "memory_mb": 8192, "disk_mb": 65536}, "tags": ["x", "y"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["minimum_requirements"] == {"cpu": 4, "memory_mb": 8192, "disk_mb": 65536}
    assert r.json()["tags"] == ["x", "y"]
    assert r.json()["description"] == "new"

    access = {"required_roles": ["QA", "ADMIN"], "required_claims": ["X", "PULL_CATALOG_MANIFEST"]}
    r = admin.put(m + "/metadata", json=access)
    assert r.json()["required_roles"] == ["ADMIN", "QA"]
    assert r.json()["required_claims"] == ["PULL_CATALOG_MANIFEST", "X"]
    assert admin.get(m).json()["description"] == "new"

    for bad in (
        {"size": 1},
        {"download_count": 9},
        {"tainted": True},
        {"description": 5},
        {"vm_type": "vmware"},
        {"minimum_requirements": {"cpu": -1}},
        {"minimum_requirements": {"gpu": 1}},
        {"minimum_requirements": {"cpu": True}},
        {"tags": "x"},
    ):
        assert_error(admin.put(m + "/metadata", json=bad), 400, "invalid_input")
    assert admin.get(m).json()["tainted"] is False
    assert_error(admin.put(f"/catalog/{cid}/9.9/x86_64/metadata", json={"description": "x"}), 404, "not_found")


def test_concurrent_state_changes_lose_nothing(backend, cid):
    with backend.http(roles=["ADMIN"], subject="a") as c:
        push_pack(c, cid, "1.0", "x86_64", {"d": b"x"})
    m = f"/catalog/{cid}/1.0/x86_64"
    n = 8
    clients = [backend.http(roles=["ADMIN"], subject=f"admin-{i}") for i in range(n)]
    try:
        taints = race(n, lambda i: clients[i].patch(m + "/taint"))
        assert sorted(r.status_code for r in taints) == [200] + [409] * (n - 1)
        winner = next(r.json() for r in taints if r.status_code == 200)
        assert clients[0].get(m).json()["tainted_by"] == winner["tainted_by"]

        edits = race(n, lambda i: clients[i].patch(m + "/tags", json={"tags": [f"tag-{i}"]}))
        for r in edits:
            if r.status_code != 200:  # the server may give up after several lost races, and says so
                assert_error(r, 409, "conflict")
        added = {f"tag-{i}" for i, r in enumerate(edits) if r.status_code == 200}
        assert len(added) >= 1
        assert set(clients[0].get(m).json()["tags"]) >= added  # no lost update
    finally:
        for c in clients:
            c.close()


def test_purge_keeps_chunks_an_upload_in_progress_relies_on(admin, cid):
    shared, old_only, new_only = _blocks(7), _blocks(8), _blocks(9)
    push_pack(admin, cid, "1.0", "x86_64", {"disk": shared + old_only})
    pending = build_pack({"disk": shared + new_only})
    session = begin_push(admin, cid, "2.0", "x86_64", pending).json()
    put_index(admin, session, index_bytes(pending))
    asked = ask_chunks(admin, session["upload_id"], pending.digests).json()
    new_digest = hashlib.sha256(new_only).hexdigest()
    assert asked["stored"] == [hashlib.sha256(shared).hexdigest()]
    assert list(asked["urls"]) == [new_digest]
    assert admin.delete(f"/catalog/{cid}/1.0", params={"purge": "true"}).status_code == 204
    # the pending push was told not to send the shared chunk: it must still be there to commit
    upload_chunks(asked["urls"], pending.chunks, asked["put_headers"])
    assert verify(admin, session["upload_id"], [new_digest]).json()["verified"] == [new_digest]
    done = commit(admin, session["upload_id"])
    assert done.status_code == 200, done.text
    urls = _chunk_urls(admin, cid, "2.0", "x86_64")
    assert set(urls) == set(pending.chunks)
    for url in urls.values():
        assert plain.get(url).status_code == 200

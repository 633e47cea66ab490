"""Reading the catalog: health, the OpenAPI document, lists, single manifests, filters, pagination."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.contract.helpers import Pack, assert_error, begin_push, push_empty, push_pack

# The public contract (docs/architecture.md, "The HTTP contract"): the catalog's routes plus whoami,
# API keys, URL pages, storage protocol v2's chunk questions, verification, corrupt-chunk reports
# and garbage collection.
CONTRACT_ROUTES = {
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/docs"),
    ("GET", "/api/v1/auth/whoami"),
    ("GET", "/api/v1/auth/api-keys"),
    ("POST", "/api/v1/auth/api-keys"),
    ("DELETE", "/api/v1/auth/api-keys/{key_id}"),
    ("GET", "/api/v1/catalog"),
    ("POST", "/api/v1/catalog/import"),
    ("GET", "/api/v1/catalog/{id}"),
    ("DELETE", "/api/v1/catalog/{id}"),
    ("GET", "/api/v1/catalog/{id}/{version}"),
    ("DELETE", "/api/v1/catalog/{id}/{version}"),
    ("GET", "/api/v1/catalog/{id}/{version}/{arch}"),
    ("DELETE", "/api/v1/catalog/{id}/{version}/{arch}"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/taint"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/untaint"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/revoke"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/roles"),
    ("DELETE", "/api/v1/catalog/{id}/{version}/{arch}/roles"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/claims"),
    ("DELETE", "/api/v1/catalog/{id}/{version}/{arch}/claims"),
    ("PATCH", "/api/v1/catalog/{id}/{version}/{arch}/tags"),
    ("DELETE", "/api/v1/catalog/{id}/{version}/{arch}/tags"),
    ("PUT", "/api/v1/catalog/{id}/{version}/{arch}/metadata"),
    ("POST", "/api/v1/catalog/{id}/{version}/{arch}/push"),
    ("POST", "/api/v1/catalog/{id}/{version}/{arch}/pull"),
    ("POST", "/api/v1/catalog/{id}/{version}/{arch}/pull/urls"),
    ("POST", "/api/v1/catalog/{id}/{version}/{arch}/pull/report"),
    ("POST", "/api/v1/uploads/{upload_id}/chunks"),
    ("POST", "/api/v1/uploads/{upload_id}/index"),
    ("POST", "/api/v1/uploads/{upload_id}/verify"),
    ("POST", "/api/v1/uploads/{upload_id}/commit"),
    ("DELETE", "/api/v1/uploads/{upload_id}"),
    ("POST", "/api/v1/admin/gc"),
}
PASSWORD_LOGIN_ROUTES = {("POST", "/api/v1/auth/token"), ("POST", "/api/v1/auth/refresh")}
# The server's own users (core.users): only where it has them, as it has password login (the embedded one).
USER_ROUTES = {
    ("GET", "/api/v1/admin/users"),
    ("POST", "/api/v1/admin/users"),
    ("DELETE", "/api/v1/admin/users/{username}"),
    ("PUT", "/api/v1/admin/users/{username}/roles"),
    ("PUT", "/api/v1/admin/users/{username}/password"),
}

MANIFEST_FIELDS = {
    "id", "catalog_id", "version", "architecture", "description", "tags", "vm_type", "size", "stored_size",
    "pack", "storage", "required_roles", "required_claims", "minimum_requirements", "tainted", "tainted_by",
    "tainted_at", "untainted_by", "untainted_at", "revoked", "revoked_by", "revoked_at", "created_at",
    "created_by", "updated_at", "download_count", "last_downloaded_at", "last_downloaded_by", "status",
}  # fmt: skip


def test_health_is_public(backend):
    with backend.http(anonymous=True) as anonymous:
        r = anonymous.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["content-type"].startswith("application/json")


def test_openapi_document_is_public_and_describes_the_contract(backend):
    with backend.http(anonymous=True) as anonymous:
        r = anonymous.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    expected = set(CONTRACT_ROUTES)
    if backend.supports_password_login:
        expected |= PASSWORD_LOGIN_ROUTES | USER_ROUTES
    assert documented == expected
    errors = doc["components"]["schemas"]["Error"]
    assert errors["required"] == ["error"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }, (method, path, status)


def test_every_documented_route_is_served(backend, su, cid):
    with backend.http(anonymous=True) as anonymous:
        doc = anonymous.get("/openapi.json").json()
    values = {
        "id": cid,
        "version": "1.0",
        "arch": "x86_64",
        "upload_id": "bm90LWFuLXVwbG9hZA",
        "key_id": "0" * 16,
        "username": "nobody-" + cid,
    }
    unknown = su.get("/definitely/not/a/route")
    no_route = assert_error(unknown, 404, "not_found")["message"]
    assert "no such route" in no_route
    for path, ops in doc["paths"].items():
        concrete = path.removeprefix("/api/v1")
        for name, value in values.items():
            concrete = concrete.replace("{" + name + "}", value)
        assert "{" not in concrete, path
        for method in ops:
            body = {} if method in ("post", "put", "patch") else None
            if concrete == "/admin/gc":
                body = {"dry_run": True}  # a real sweep would hold leases other tests' pushes must wait for
            r = su.request(method.upper(), concrete, json=body)
            assert r.status_code != 405, (method, path, r.text)
            assert r.status_code < 500, (method, path, r.text)
            assert "Traceback" not in r.text
            if r.status_code == 404:
                assert "no such route" not in assert_error(r, 404)["message"], (method, path)


def test_manifest_shape_is_the_same_in_lists_and_single_get(backend, publisher, cid):
    pushed = push_pack(
        publisher, cid, "1.0", "x86_64", {"disk.hdd": b"a" * 5000},
        description="first", tags=["Base", "ci"], vm_type="macvm",
        minimum_requirements={"cpu": 2, "memory_mb": 4096, "disk_mb": 100},
    )  # fmt: skip
    assert set(pushed) >= MANIFEST_FIELDS
    assert pushed["catalog_id"] == cid
    assert pushed["description"] == "first"
    assert pushed["tags"] == ["base", "ci"]
    assert pushed["vm_type"] == "macvm"
    assert pushed["minimum_requirements"] == {"cpu": 2, "memory_mb": 4096, "disk_mb": 100}
    assert pushed["size"] == 5000
    assert pushed["created_by"] == "paul-publisher"
    assert pushed["status"] == "ready"
    assert pushed["download_count"] == 0
    assert pushed["storage"]["name"]
    one = publisher.get(f"/catalog/{cid}/1.0/x86_64")
    assert one.status_code == 200
    by_id = publisher.get(f"/catalog/{cid}")
    by_version = publisher.get(f"/catalog/{cid}/1.0")
    listed = publisher.get("/catalog", params={"tag": "base"})
    assert by_id.status_code == by_version.status_code == listed.status_code == 200
    assert by_id.json() == {"items": [one.json()]}
    assert by_version.json() == {"items": [one.json()]}
    mine = [m for m in listed.json()["items"] if m["catalog_id"] == cid]
    assert mine == [one.json()]
    assert one.json() == pushed


def test_identity_is_normalised(publisher, cid):
    pushed = push_pack(publisher, cid.upper(), "V1.0", "amd64", {"f": b"x"})
    assert (pushed["catalog_id"], pushed["version"], pushed["architecture"]) == (cid, "V1.0", "x86_64")
    for arch in ("x86_64", "AMD64", "x64"):
        r = publisher.get(f"/catalog/{cid.upper()}/V1.0/{arch}")
        assert r.status_code == 200, arch
        assert r.json()["id"] == pushed["id"]
    # versions are case-sensitive, like docker tags
    assert_error(publisher.get(f"/catalog/{cid}/v1.0/x86_64"), 404, "not_found")
    push_pack(publisher, cid, "1.0", "aarch64", {"f": b"y"})
    assert publisher.get(f"/catalog/{cid}/1.0/arm").json()["architecture"] == "arm64"


def test_nothing_visible_is_404(user, cid):
    assert_error(user.get(f"/catalog/{cid}"), 404, "not_found")
    assert_error(user.get(f"/catalog/{cid}/1.0"), 404, "not_found")
    assert_error(user.get(f"/catalog/{cid}/latest"), 404, "not_found")
    assert_error(user.get(f"/catalog/{cid}/1.0/x86_64"), 404, "not_found")
    assert_error(user.get(f"/catalog/{cid}/latest/arm64"), 404, "not_found")


def test_latest_resolves_per_architecture_to_newest_usable(admin, cid):
    v1 = push_pack(admin, cid, "1.0", "x86_64", {"f": b"one"})
    v2 = push_pack(admin, cid, "2.0", "x86_64", {"f": b"two"})
    a1 = push_pack(admin, cid, "1.0", "arm64", {"f": b"arm"})
    # "newest" is the most recently pushed, not the highest-sorting version string
    v0 = push_pack(admin, cid, "0.9", "arm64", {"f": b"arm-older-name-newer-push"})

    r = admin.get(f"/catalog/{cid}/latest")
    assert r.status_code == 200
    assert [(m["architecture"], m["id"]) for m in r.json()["items"]] == [("arm64", v0["id"]), ("x86_64", v2["id"])]
    assert admin.get(f"/catalog/{cid}/latest/x86_64").json()["id"] == v2["id"]
    pulled = admin.post(f"/catalog/{cid}/latest/x86_64/pull")
    assert pulled.status_code == 200
    assert pulled.json()["manifest"]["id"] == v2["id"]
    assert pulled.json()["manifest"]["version"] == "2.0"

    assert admin.patch(f"/catalog/{cid}/2.0/x86_64/taint").status_code == 200
    assert admin.get(f"/catalog/{cid}/latest/x86_64").json()["id"] == v1["id"]
    assert admin.patch(f"/catalog/{cid}/0.9/arm64/revoke").status_code == 200
    assert admin.get(f"/catalog/{cid}/latest/arm64").json()["id"] == a1["id"]

    assert admin.patch(f"/catalog/{cid}/1.0/x86_64/revoke").status_code == 200
    assert_error(admin.get(f"/catalog/{cid}/latest/x86_64"), 404, "not_found")
    assert_error(admin.post(f"/catalog/{cid}/latest/x86_64/pull"), 404, "not_found")
    only_arm = admin.get(f"/catalog/{cid}/latest").json()["items"]
    assert [m["id"] for m in only_arm] == [a1["id"]]

    assert admin.patch(f"/catalog/{cid}/2.0/x86_64/untaint").status_code == 200
    assert admin.get(f"/catalog/{cid}/latest/x86_64").json()["id"] == v2["id"]
    # a version still being uploaded is not usable either
    r = begin_push(admin, cid, "3.0", "x86_64", Pack({"chunk_size": 4096, "files": []}))
    assert r.status_code == 201, r.text
    assert admin.get(f"/catalog/{cid}/latest/x86_64").json()["id"] == v2["id"]


def test_filters_by_tag_and_architecture(publisher, cid):
    tag = f"flt-{uuid.uuid4().hex[:10]}"
    push_empty(publisher, cid, "1.0", "x86_64", tags=[tag])
    push_empty(publisher, cid, "1.0", "arm64", tags=[tag, "other"])
    push_empty(publisher, cid, "2.0", "arm64")

    def keys(**params: str) -> set[tuple[str, str, str]]:
        r = publisher.get("/catalog", params={"limit": "1000", **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"}
        return {(m["catalog_id"], m["version"], m["architecture"]) for m in body["items"]}

    assert keys(tag=tag) == {(cid, "1.0", "x86_64"), (cid, "1.0", "arm64")}
    assert keys(tag=tag.upper()) == {(cid, "1.0", "x86_64"), (cid, "1.0", "arm64")}
    assert keys(tag=tag, architecture="arm64") == {(cid, "1.0", "arm64")}
    assert keys(tag=tag, architecture="aarch64") == {(cid, "1.0", "arm64")}
    assert keys(tag=tag, architecture="amd64") == {(cid, "1.0", "x86_64")}
    assert keys(tag=f"none-{uuid.uuid4().hex[:10]}") == set()
    mine_arm = {k for k in keys(architecture="arm64") if k[0] == cid}
    # filtering by architecture alone may page past other tests' data: follow the cursor
    cursor = None
    while True:
        params = {"architecture": "arm64", "limit": "1000"}
        if cursor:
            params["cursor"] = cursor
        body = publisher.get("/catalog", params=params).json()
        assert all(m["architecture"] == "arm64" for m in body["items"])
        mine_arm |= {
            (m["catalog_id"], m["version"], m["architecture"]) for m in body["items"] if m["catalog_id"] == cid
        }
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert mine_arm == {(cid, "1.0", "arm64"), (cid, "2.0", "arm64")}
    assert_error(publisher.get("/catalog", params={"architecture": "sparc"}), 400, "invalid_input")
    assert_error(publisher.get("/catalog", params={"tag": "NOT A TAG"}), 400, "invalid_input")


def test_pagination_returns_every_visible_manifest_exactly_once(backend, cid):
    tag = f"page-{uuid.uuid4().hex[:10]}"
    # enough for a dozen short pages across three catalogs, hidden manifests interleaved; every backend
    # runs this, so it stays small (the stores' own keyset pagination is tested over more in test_ports)
    visible = 75
    hidden = 12
    limit = 7
    with backend.http(roles=["ADMIN"], subject="pager") as admin:

        def make(i: int) -> None:
            catalog = f"{cid}-{i % 3}"
            if i < visible:
                push_empty(admin, catalog, f"1.{i}", "x86_64" if i % 2 else "arm64", tags=[tag])
            else:
                push_empty(admin, catalog, f"9.{i}", "x86_64", tags=[tag], required_roles=["ADMIN"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(visible + hidden)))

    with backend.http(roles=["USER"], subject="reader") as reader:
        seen: list[tuple[str, str, str]] = []
        cursor = None
        pages = 0
        while True:
            params = {"tag": tag, "limit": str(limit)}
            if cursor is not None:
                params["cursor"] = cursor
            r = reader.get("/catalog", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            pages += 1
            assert 0 < len(body["items"]) <= limit or body["next_cursor"] is None
            seen += [(m["catalog_id"], m["version"], m["architecture"]) for m in body["items"]]
            assert all(tag in m["tags"] for m in body["items"])
            assert all(not m["required_roles"] for m in body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert pages < 100, "pagination does not terminate"
        assert len(seen) == len(set(seen)) == visible
        assert pages >= -(-visible // limit)

        # an admin sees the hidden ones too
        with backend.http(roles=["ADMIN"], subject="pager") as admin:
            r = admin.get("/catalog", params={"tag": tag, "limit": "1000"})
            assert len(r.json()["items"]) == visible + hidden
            assert r.json()["next_cursor"] is None

        for bad in ("not-a-cursor", "!!!", "W10", "eyJhIjoxfQ"):
            assert_error(reader.get("/catalog", params={"tag": tag, "cursor": bad}), 400, "invalid_input")
        for limit in ("0", "5000", "-1", "ten", "1.5"):
            assert_error(reader.get("/catalog", params={"limit": limit}), 400, "invalid_input")
        assert len(reader.get("/catalog", params={"tag": tag, "limit": "1"}).json()["items"]) == 1

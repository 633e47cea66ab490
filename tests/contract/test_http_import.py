"""Importing packs the original product pushed: ``<catalog_id>/<name>.pdpack`` + ``.meta`` already in the
catalog's storage are registered with ``POST /catalog/import`` (``format: "pdpack"``) and pulled
through one presigned GET.

The test plays the administrator who has the original's packs in the bucket: it writes them with the
backend's own blob adapter (``backend.put_object``), never through the catalog's API. The packs and
``.meta`` documents are built here the way the original's Go code writes them (member names with a
leading ``/``, mode and size only, gzip; ``json.MarshalIndent`` field names), not with pdcat's writer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from core.pdpack_meta import meta_key, pack_key
from tests.contract.helpers import assert_error, plain, pull

ARCH = "x86_64"
FILES = {
    "config.pvs": b"<ParallelsVirtualMachine/>\n",
    "harddisk.hdd/DiskDescriptor.xml": b"<Parallels_disk_image/>\n",
    "harddisk.hdd/harddisk.hdd.0.hds": hashlib.sha256(b"disk").digest() * 512 + bytes(8192),
}


def go_pack(files: dict[str, bytes] = FILES, *, compress: bool = True) -> bytes:
    """A pack as ``compressMachine`` writes it: one member per regular file, named with a leading
    slash, mode and size only, then gzip."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("/" + name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0) if compress else raw.getvalue()


def go_meta(cid: str, version: str, pack: bytes, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``.meta`` with the Go struct's field names, as ``json.MarshalIndent`` writes them."""
    name = f"{cid}-{ARCH}-{version}".lower()
    doc: dict[str, Any] = {
        "id": hashlib.sha256(name.encode()).hexdigest(),
        "catalog_id": cid,
        "description": "pushed by the original",
        "version": version,
        "name": name,
        "architecture": "amd64",  # the original keeps what the user typed
        "path": f"/{cid}",
        "pack_path": f"{name}.pdpack",
        "metadata_path": f"{name}.meta",
        "type": "pvm",
        "provider": None,
        "size": sum(len(d) for d in FILES.values()),
        "required_roles": [],
        "required_claims": None,  # Go's nil slice
        "tags": ["LTS", "ci"],
        "created_at": "2024-05-02T10:41:02Z",
        "updated_at": "2024-05-02T10:41:02Z",
        "is_compressed": True,
        "pack_relative_path": "",
        "download_count": 7,
        "compressed_checksum": hashlib.md5(pack).hexdigest(),
        "virtual_machine_contents": [
            {"is_dir": True, "name": "harddisk.hdd", "path": "/", "hash": "", "size": 0},
            *({"is_dir": False, "name": n.rsplit("/", 1)[-1], "path": "/", "hash": "", "size": len(d)}
              for n, d in FILES.items()),
        ],
        "pack_contents": [],
        "pack_size": len(pack),
        "tainted": False,
        "revoked": False,
        "minimum_requirements": {"cpu": 2, "memory": 4096, "disk": 65536},
    }  # fmt: skip
    doc.update(fields or {})
    return doc


def store_pack(backend, cid: str, version: str, meta_fields: dict[str, Any] | None = None) -> bytes:
    """Put a pack and its ``.meta`` where the original keeps them; returns the pack's bytes."""
    pack = go_pack()
    backend.put_object(pack_key(cid, ARCH, version), pack)
    meta = go_meta(cid, version, pack, meta_fields)
    backend.put_object(meta_key(cid, ARCH, version), json.dumps(meta, indent=2).encode())
    return pack


def import_body(cid: str, version: str, **extra: Any) -> dict[str, Any]:
    return {"catalog_id": cid, "version": version, "architecture": ARCH, "format": "pdpack", **extra}


def unpack_members(pack: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(pack), mode="r:*") as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]


def test_a_pdpack_is_imported_without_moving_a_byte_and_pulled_through_one_url(backend, publisher, user, cid):
    pack = store_pack(backend, cid, "24.04")
    assert_error(user.post("/catalog/import", json=import_body(cid, "24.04")), 403, "forbidden")

    r = publisher.post("/catalog/import", json=import_body(cid, "24.04"))
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["catalog_id"], m["version"], m["architecture"], m["status"]) == (cid, "24.04", ARCH, "ready")
    assert m["usable"] is True and m["created_by"] == "paul-publisher"
    assert m["pack"] == {
        "format": "pdpack",
        "file_count": 3,
        "key": pack_key(cid, ARCH, "24.04"),
        "meta_key": meta_key(cid, ARCH, "24.04"),
        "pack_size": len(pack),
        "compressed_checksum": hashlib.md5(pack).hexdigest(),
        "is_compressed": True,
    }
    assert m["size"] == sum(len(d) for d in FILES.values())
    assert m["stored_size"] == len(pack)
    assert m["vm_type"] == "pvm"
    # the metadata comes from the .meta, by the catalog's own rules (tags lower-case, MiB named as such)
    assert m["description"] == "pushed by the original"
    assert m["tags"] == ["ci", "lts"]
    assert m["minimum_requirements"] == {"cpu": 2, "memory_mb": 4096, "disk_mb": 65536}
    assert m["download_count"] == 0  # the original's own counter is not carried over
    assert "http" not in json.dumps(m)
    assert publisher.get(f"/catalog/{cid}/24.04/{ARCH}").json() == m

    r = pull(user, cid, "latest", ARCH)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"format", "manifest", "pack", "expires_at"}
    assert answer["format"] == "pdpack"  # no index_url: the pack is one object
    assert answer["manifest"]["version"] == "24.04"
    assert answer["manifest"]["download_count"] == 1
    assert answer["manifest"]["last_downloaded_by"] == "ursula-user"
    got = answer["pack"]
    assert {k: got[k] for k in ("format", "size", "checksum", "checksum_algorithm", "compressed")} == {
        "format": "pdpack",
        "size": len(pack),
        "checksum": hashlib.md5(pack).hexdigest(),
        "checksum_algorithm": "md5",
        "compressed": True,
    }
    downloaded = plain.get(got["url"])
    assert downloaded.status_code == 200, downloaded.text[:300]
    assert downloaded.content == pack
    assert unpack_members(downloaded.content) == FILES

    # a fresh URL for the pull in progress: not another download, and no chunks to ask for
    fresh = user.post(f"/catalog/{cid}/24.04/{ARCH}/pull/urls", json={})
    assert fresh.status_code == 200, fresh.text
    assert set(fresh.json()) == {"pack", "expires_at"}
    assert fresh.json()["pack"]["size"] == len(pack)
    assert plain.get(fresh.json()["pack"]["url"]).content == pack
    assert_error(user.post(f"/catalog/{cid}/24.04/{ARCH}/pull/urls", json={"digests": ["0" * 64]}), 400)
    assert user.get(f"/catalog/{cid}/24.04/{ARCH}").json()["download_count"] == 1

    # the identity is taken now
    conflict = publisher.post("/catalog/import", json=import_body(cid, "24.04"))
    assert_error(conflict, 409, "conflict")


def test_the_request_overrides_what_the_meta_says(backend, publisher, user, cid):
    store_pack(backend, cid, "1.0", {"tags": ["Not A Tag!"], "description": "x" * 5000, "type": ""})
    r = publisher.post("/catalog/import", json=import_body(cid, "1.0"))
    error = assert_error(r, 400, "invalid_input")
    assert "'description'" in error["message"] and meta_key(cid, ARCH, "1.0") in error["message"]

    body = import_body(
        cid, "1.0", tags=["imported"], description="from the old catalog", vm_type="macvm", required_roles=["OPS"]
    )
    r = publisher.post("/catalog/import", json=body)
    assert r.status_code == 201, r.text
    m = r.json()
    assert (m["tags"], m["description"], m["vm_type"], m["required_roles"]) == (
        ["imported"],
        "from the old catalog",
        "macvm",
        ["OPS"],
    )
    # the .meta's minimum requirements still apply where the request is silent
    assert m["minimum_requirements"]["memory_mb"] == 4096
    # the required role hides it from everyone without it, as for any manifest
    assert_error(user.get(f"/catalog/{cid}/1.0/{ARCH}"), 404, "not_found")
    assert_error(pull(user, cid, "1.0", ARCH), 404, "not_found")
    with backend.http(roles=["USER", "OPS"], subject="olga-ops") as ops:
        assert pull(ops, cid, "1.0", ARCH).status_code == 200


def test_required_roles_of_the_meta_are_kept(backend, admin, user, cid):
    store_pack(backend, cid, "1.0", {"required_roles": ["developers"], "required_claims": ["PULL_CATALOG_MANIFEST"]})
    m = admin.post("/catalog/import", json=import_body(cid, "1.0")).json()
    assert (m["required_roles"], m["required_claims"]) == (["DEVELOPERS"], ["PULL_CATALOG_MANIFEST"])
    assert_error(user.get(f"/catalog/{cid}/1.0/{ARCH}"), 404, "not_found")


def test_a_meta_naming_another_pack_file_in_its_folder_is_followed(backend, publisher, cid):
    pack = go_pack({"config.pvs": b"renamed"}, compress=False)
    backend.put_object(f"{cid}/hand-copied.pdpack", pack)
    meta = go_meta(cid, "2.0", pack, {"pack_path": "/somewhere/else/hand-copied.pdpack", "is_compressed": False})
    backend.put_object(meta_key(cid, ARCH, "2.0"), json.dumps(meta).encode())
    r = publisher.post("/catalog/import", json=import_body(cid, "2.0"))
    assert r.status_code == 201, r.text
    assert r.json()["pack"]["key"] == f"{cid}/hand-copied.pdpack"
    assert r.json()["pack"]["is_compressed"] is False
    answer = pull(publisher, cid, "2.0", ARCH).json()
    assert plain.get(answer["pack"]["url"]).content == pack


@pytest.mark.parametrize(
    ("meta_fields", "status", "named"),
    [
        ({"size": "12"}, 400, "'size'"),
        ({"compressed_checksum": ""}, 400, "'compressed_checksum'"),
        ({"compressed_checksum": "0123abcd-2"}, 400, "'compressed_checksum'"),  # a multipart ETag
        ({"minimum_requirements": {"cpu": 5000}}, 400, "'minimum_requirements'"),
        ({"type": "vmx"}, 400, "'type'"),
        ({"pack_path": "../.hidden"}, 400, "'pack_path'"),
        ({"version": "9.9"}, 422, "describes"),
        ({"architecture": "arm64"}, 422, "describes"),
    ],
)
def test_a_bad_meta_is_refused_naming_what_is_wrong(backend, publisher, cid, meta_fields, status, named):
    store_pack(backend, cid, "1.0", meta_fields)
    r = publisher.post("/catalog/import", json=import_body(cid, "1.0"))
    error = assert_error(r, status)
    assert named in error["message"], error
    assert_error(publisher.get(f"/catalog/{cid}/1.0/{ARCH}"), 404, "not_found")


def test_missing_files_and_bad_requests(backend, publisher, cid):
    missing_meta = assert_error(publisher.post("/catalog/import", json=import_body(cid, "1.0")), 404, "not_found")
    assert meta_key(cid, ARCH, "1.0") in missing_meta["message"]

    pack = go_pack()
    backend.put_object(meta_key(cid, ARCH, "1.0"), json.dumps(go_meta(cid, "1.0", pack)).encode())
    missing_pack = assert_error(publisher.post("/catalog/import", json=import_body(cid, "1.0")), 404, "not_found")
    assert pack_key(cid, ARCH, "1.0") in missing_pack["message"]
    # a longer key that merely starts with the pack's name is not the pack
    backend.put_object(pack_key(cid, ARCH, "1.0") + ".part", pack)
    assert_error(publisher.post("/catalog/import", json=import_body(cid, "1.0")), 404, "not_found")

    backend.put_object(meta_key(cid, ARCH, "1.1"), b"{not json")
    backend.put_object(pack_key(cid, ARCH, "1.1"), pack)
    bad = assert_error(publisher.post("/catalog/import", json=import_body(cid, "1.1")), 400, "invalid_input")
    assert "not valid JSON" in bad["message"]

    for body in (
        import_body(cid, "1.0", format="tar"),
        import_body(cid, "1.0", format=1),
        import_body(cid, "1.0", compressed_checksum="00"),
        import_body(cid, "latest"),
        {"format": "pdpack", "catalog_id": cid},
    ):
        assert_error(publisher.post("/catalog/import", json=body), 400, "invalid_input")
    # without a format, import still means a pdcat index in storage
    native = assert_error(publisher.post("/catalog/import", json={**import_body(cid, "1.1"), "format": "pdcat"}), 404)
    assert "index" in native["message"]


def test_state_rules_apply_to_imported_packs(backend, admin, cid):
    store_pack(backend, cid, "1.0")
    assert admin.post("/catalog/import", json=import_body(cid, "1.0")).status_code == 201
    assert admin.patch(f"/catalog/{cid}/1.0/{ARCH}/taint").status_code == 200
    assert_error(pull(admin, cid, "1.0", ARCH), 409, "tainted")
    assert_error(admin.post(f"/catalog/{cid}/1.0/{ARCH}/pull/urls", json={}), 409, "tainted")
    assert admin.patch(f"/catalog/{cid}/1.0/{ARCH}/revoke").status_code == 200
    assert_error(pull(admin, cid, "1.0", ARCH), 410, "revoked")


def test_purge_removes_the_files_only_when_no_other_manifest_names_them(backend, admin, cid):
    # versions "1.0-RC" and "1.0-rc" are two identities, but the original names both files "...-1.0-rc"
    pack = store_pack(backend, cid, "1.0-rc", {"version": "1.0-RC"})
    assert admin.post("/catalog/import", json=import_body(cid, "1.0-RC")).status_code == 201
    assert admin.post("/catalog/import", json=import_body(cid, "1.0-rc")).status_code == 201
    url = pull(admin, cid, "1.0-rc", ARCH).json()["pack"]["url"]

    # delete without purge keeps the files: the pack can be imported again
    assert admin.delete(f"/catalog/{cid}/1.0-rc/{ARCH}").status_code == 204
    assert admin.post("/catalog/import", json=import_body(cid, "1.0-rc")).status_code == 201

    assert admin.delete(f"/catalog/{cid}/1.0-rc/{ARCH}", params={"purge": "true"}).status_code == 204
    assert plain.get(url).content == pack  # still named by 1.0-RC
    assert pull(admin, cid, "1.0-RC", ARCH).status_code == 200

    assert admin.delete(f"/catalog/{cid}/1.0-RC/{ARCH}", params={"purge": "true"}).status_code == 204
    assert plain.get(url).status_code in (403, 404)  # the object is gone (Azurite may say 403)
    gone = assert_error(admin.post("/catalog/import", json=import_body(cid, "1.0-rc")), 404, "not_found")
    assert ".meta" in gone["message"]


def test_openapi_documents_the_pdpack_import_and_pull(backend):
    with backend.http(anonymous=True) as anonymous:
        doc = anonymous.get("/openapi.json").json()
    body = doc["paths"]["/api/v1/catalog/import"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["format"]["enum"] == ["pdcat", "pdpack"]
    pulled = doc["paths"]["/api/v1/catalog/{id}/{version}/{arch}/pull"]["post"]["responses"]["200"]
    assert pulled["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PullAnswer"}
    answer = doc["components"]["schemas"]["PullAnswer"]
    assert answer["properties"]["format"]["enum"] == ["chunks", "pdpack"]
    assert {"index_url", "pack"} <= set(answer["properties"])
    urls = doc["paths"]["/api/v1/catalog/{id}/{version}/{arch}/pull/urls"]["post"]["responses"]["200"]
    assert urls["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/UrlsAnswer"}
    assert "pack" in doc["components"]["schemas"]["UrlsAnswer"]["properties"]

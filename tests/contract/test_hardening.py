"""Security hardening, on every backend: attack classes kept closed by the one contract suite.

- an index that declares absurd sizes is refused at commit (core.pack's bounds);
- concurrent deletes of one version have exactly one winner (the etag-conditional tombstone);
- identities are ASCII: a Kelvin sign (U+212A) or a dotless i is refused, never folded into the
  ASCII id or role it resembles, in a JSON body, in a query and percent-encoded in the path.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from tests.contract.helpers import (
    CHUNK_SIZE,
    assert_error,
    commit,
    manifest_path,
    push_empty,
    put_index,
    race,
)

EIB = 1024**6
TIB = 1024**4
KELVIN = "\u212a"  # KELVIN SIGN, lower-cases to 'k'
DOTLESS_I = "\u0131"  # LATIN SMALL LETTER DOTLESS I, upper-cases to 'I'


# ---- an index that declares absurd sizes ------------------------------------------------------
def _raw_index(files: list[dict[str, Any]]) -> bytes:
    """Canonical bytes of an index as a hostile pusher writes it (core.pack would refuse to build it)."""
    doc = {
        "format": 1,
        "compression": "zstd",
        "chunk_size": CHUNK_SIZE,
        "size": sum(f["size"] for f in files),
        "files": files,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _hole(path: str, size: int) -> dict[str, Any]:
    """A file that is all hole: no chunk to upload, so the index alone reaches the commit."""
    return {"path": path, "type": "file", "mode": 0o644, "size": size, "chunks": []}


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ([_hole("disk.hdd/huge.hds", 4 * EIB)], "disk.hdd/huge.hds"),
        ([_hole("big.hds", 16 * TIB + 1)], "big.hds"),
        ([_hole(f"disk{i}.hds", 16 * TIB) for i in range(4)] + [_hole("one-more.hds", 4096)], "one-more.hds"),
    ],
    ids=["4-eib-file", "16-tib-plus-one", "total-over-64-tib"],
)
def test_an_index_declaring_absurd_sizes_is_refused_at_commit(
    publisher, cid: str, files: list[dict[str, Any]], named: str
) -> None:
    data = _raw_index(files)
    r = publisher.post(f"{manifest_path(cid, '1.0', 'x86_64')}/push", json={"chunk_size": CHUNK_SIZE})
    assert r.status_code == 201, r.text
    put_index(publisher, r.json(), data)
    error = assert_error(commit(publisher, r.json()["upload_id"]), 400, "invalid_input")
    assert named in error["message"], error
    shown = publisher.get(manifest_path(cid, "1.0", "x86_64")).json()
    assert shown["status"] == "uploading", shown  # never ready: nothing can pull it
    assert_error(publisher.post(f"{manifest_path(cid, '1.0', 'x86_64')}/pull"), (404, 409))


# ---- concurrent deletes ----------------------------------------------------------------------
@pytest.mark.parametrize("purge", [False, True], ids=["delete", "purge"])
def test_concurrent_deletes_of_one_version_have_exactly_one_winner(backend, cid: str, purge: bool) -> None:
    n = 8
    path = manifest_path(cid, "1.0", "x86_64") + ("?purge=true" if purge else "")
    clients = [backend.http(roles=["ADMIN"], subject=f"deleter-{i}") for i in range(n)]
    try:
        push_empty(clients[0], cid, "1.0")
        answers = race(n, lambda i: clients[i].delete(path))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [204] + [404] * (n - 1), statuses
        for r in answers:
            if r.status_code == 404:
                assert_error(r, 404, "not_found")
        assert_error(clients[0].get(manifest_path(cid, "1.0", "x86_64")), 404, "not_found")
    finally:
        for c in clients:
            c.close()


# ---- non-ASCII identities ---------------------------------------------------------------------
def _raw(backend, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {backend.token('root', roles=['SUPER_USER'])}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return backend.raw(method, "/api/v1" + path, headers=headers, body=json.dumps(body).encode() if body else None)


def test_a_kelvin_sign_catalog_id_is_refused_not_folded_into_the_ascii_one(backend, su, cid: str) -> None:
    ascii_id, kelvin_id = "k" + cid, KELVIN + cid
    push_empty(su, ascii_id, "1.0", tags=["stable"])
    encoded = quote(kelvin_id, safe="")  # %E2%84%AA...
    assert encoded.startswith("%E2%84%AA")
    for method, suffix, body in (
        ("GET", "", None),
        ("GET", "/1.0", None),
        ("GET", "/1.0/x86_64", None),
        ("POST", "/1.0/x86_64/pull", None),
        ("PATCH", "/1.0/x86_64/taint", None),
        ("PATCH", "/1.0/x86_64/tags", {"tags": ["hijacked"]}),
        ("DELETE", "/1.0/x86_64", None),
        ("DELETE", "", None),
    ):
        for path in (f"/catalog/{encoded}{suffix}", f"/catalog/{encoded.lower()}{suffix}"):
            r = _raw(backend, method, path, body)
            error = assert_error(r, 400, "invalid_input")
            assert error["message"].startswith("invalid catalog id"), (method, path, error)
    # httpx percent-encodes the id itself: the same answer through an ordinary client
    assert_error(su.get(f"/catalog/{kelvin_id}/1.0/x86_64"), 400, "invalid_input")
    r = su.post(f"/catalog/{kelvin_id}/2.0/x86_64/push", json={"chunk_size": CHUNK_SIZE})
    assert_error(r, 400, "invalid_input")
    # the ASCII version was neither changed, tainted nor deleted, and no second one appeared
    shown = su.get(manifest_path(ascii_id, "1.0", "x86_64")).json()
    assert (shown["status"], shown["tags"], shown.get("tainted", False)) == ("ready", ["stable"], False), shown
    assert [m["version"] for m in su.get(f"/catalog/{ascii_id}").json()["items"]] == ["1.0"]


def test_a_percent_encoded_ascii_id_names_the_same_version_on_every_backend(backend, su, cid: str) -> None:
    """API Gateway decodes path parameters before Lambda sees them; the AWS harnesses do too, so an
    encoded letter or dot means what it means on the embedded server and on Azure."""
    push_empty(su, cid, "1.0")
    encoded_id = "%" + format(ord(cid[0]), "02X") + cid[1:]
    for path in (f"/catalog/{encoded_id}/1.0/x86_64", f"/catalog/{cid}/1%2E0/x86_64", f"/catalog/{encoded_id}"):
        r = _raw(backend, "GET", path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("version", f"1.0-{KELVIN}"),
        ("arch", f"{KELVIN}86_64"),
        ("arch", "x86\uff3f64"),
    ],
)
def test_non_ascii_versions_and_architectures_in_the_path_are_refused(
    backend, cid: str, where: str, value: str
) -> None:
    version, arch = (value, "x86_64") if where == "version" else ("1.0", value)
    path = f"/catalog/{cid}/{quote(version, safe='')}/{quote(arch, safe='')}"
    for method, suffix in (("GET", ""), ("POST", "/pull"), ("DELETE", "")):
        assert_error(_raw(backend, method, path + suffix), 400, "invalid_input")


def test_non_ascii_tags_roles_and_claims_in_bodies_and_queries_are_refused(backend, su, cid: str) -> None:
    push_empty(su, cid, "1.0")
    m = manifest_path(cid, "1.0", "x86_64")
    for name, values in (("tags", [f"{KELVIN}ube"]), ("roles", [f"ADM{DOTLESS_I}N"]), ("claims", [f"PU{DOTLESS_I}L"])):
        for method in ("PATCH", "DELETE"):
            assert_error(su.request(method, f"{m}/{name}", json={name: values}), 400, "invalid_input")
    # a push's metadata: refused before a session opens
    declared = {"chunk_size": CHUNK_SIZE}
    for extra in (
        {"tags": [f"lt{KELVIN}"]},
        {"required_roles": [f"ADM{DOTLESS_I}N"]},
        {"required_claims": ["PUL\u013f"]},
    ):
        assert_error(su.post(f"{manifest_path(cid, '2.0', 'x86_64')}/push", json={**declared, **extra}), 400,
                     "invalid_input")  # fmt: skip
    assert_error(su.get("/catalog", params={"tag": f"{KELVIN}ube"}), 400, "invalid_input")
    assert_error(_raw(backend, "GET", "/catalog?tag=%E2%84%AAube"), 400, "invalid_input")
    shown = su.get(m).json()
    assert (shown["tags"], shown["required_roles"], shown["required_claims"]) == ([], [], []), shown

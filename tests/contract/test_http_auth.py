"""Authentication: bearer JWTs (and attacks on them), API keys, the embedded server's password login."""

from __future__ import annotations

import base64
import json
import time
import warnings
from pathlib import Path

import httpx
import jwt
import pytest

from tests.contract.helpers import assert_error, plain, push_empty


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _payload(**extra: object) -> dict:
    now = int(time.time())
    return {"sub": "mallory", "roles": ["SUPER_USER"], "claims": [], "iat": now, "exp": now + 600, **extra}


def _get(backend, path: str, headers: dict) -> httpx.Response:
    with backend.http(anonymous=True) as anonymous:
        return anonymous.get(path, headers=headers)


def _hs512(payload: dict, secret: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns about short HS512 keys: that is the point here
        return jwt.encode(payload, secret, "HS512")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_valid_token_authenticates(backend):
    r = _get(backend, "/auth/whoami", _bearer(backend.token("carol", roles=["PUBLISHER"], claims=["X_TEAM"])))
    assert r.status_code == 200, r.text
    who = r.json()
    assert who["subject"] == "carol"
    assert who["roles"] == ["PUBLISHER"]
    assert {"X_TEAM", "PUSH_CATALOG_MANIFEST", "LIST_CATALOG_MANIFEST"} <= set(who["claims"])
    assert who["via"] == "token"


def test_token_attacks_are_401(backend, cid):
    valid = backend.token("mallory", roles=["SUPER_USER"])
    head, body, sig = valid.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    now = int(time.time())
    attacks = {
        "no token": {},
        "bad signature": _bearer(f"{head}.{body}.{flipped}"),
        "signature of another payload": _bearer(f"{head}.{_b64(_payload(sub='eve'))}.{sig}"),
        "no signature": _bearer(f"{head}.{body}."),
        "expired": _bearer(jwt.encode(_payload(iat=now - 7200, exp=now - 3600), backend.jwt_secret, "HS256")),
        "not yet valid": _bearer(jwt.encode(_payload(nbf=now + 3600), backend.jwt_secret, "HS256")),
        "no exp": _bearer(jwt.encode({"sub": "mallory", "roles": ["SUPER_USER"]}, backend.jwt_secret, "HS256")),
        # time claims are JSON numbers: pyjwt alone coerces strings and booleans with int()
        "exp a string": _bearer(jwt.encode(_payload(exp=str(now + 600)), backend.jwt_secret, "HS256")),
        "nbf a string": _bearer(jwt.encode(_payload(nbf=str(now - 60)), backend.jwt_secret, "HS256")),
        "iat a string": _bearer(jwt.encode(_payload(iat=str(now)), backend.jwt_secret, "HS256")),
        "nbf a bool": _bearer(jwt.encode(_payload(nbf=False), backend.jwt_secret, "HS256")),
        "iat a bool": _bearer(jwt.encode(_payload(iat=True), backend.jwt_secret, "HS256")),
        "no sub": _bearer(jwt.encode(_payload(sub=None), backend.jwt_secret, "HS256")),
        "roles not a list": _bearer(jwt.encode(_payload(roles={"a": 1}), backend.jwt_secret, "HS256")),
        "alg none": _bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_payload())}."),
        "alg None": _bearer(f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(_payload())}."),
        "other alg, same secret": _bearer(_hs512(_payload(), backend.jwt_secret)),
        "another secret": _bearer(jwt.encode(_payload(), "not-the-server-secret-" + "x" * 32, "HS256")),
        "garbage": _bearer("garbage"),
        "garbage with dots": _bearer("a.b.c"),
        "huge": _bearer("a" * 20000 + ".b.c"),
        "non-ascii": {"Authorization": "Bearer t\u00e9st.a.b".encode()},
        "empty bearer": {"Authorization": "Bearer"},
        "wrong scheme": {"Authorization": f"Basic {base64.b64encode(b'admin:admin').decode()}"},
        "token scheme": {"Authorization": f"Token {valid}"},
        "no scheme": {"Authorization": valid},
        "malformed api key": {"X-Api-Key": "not-a-key"},
        "unknown api key": {"X-Api-Key": "pdcat_0123456789abcdef_" + "A" * 43},
        "token and api key": {**_bearer(valid), "X-Api-Key": "pdcat_0123456789abcdef_" + "A" * 43},
    }
    for name, headers in attacks.items():
        for path in ("/auth/whoami", "/catalog", f"/catalog/{cid}/1.0/x86_64"):
            r = _get(backend, path, headers)
            error = assert_error(r, 401, "unauthenticated")
            assert valid not in r.text, name
            assert "Traceback" not in error["message"], name
    # a write, too: nothing happened
    with backend.http(anonymous=True) as anonymous:
        r = anonymous.post(f"/catalog/{cid}/1.0/x86_64/push", json={}, headers=attacks["alg none"])
    assert_error(r, 401, "unauthenticated")


def test_public_routes_need_no_token(backend):
    bad = _bearer("garbage")
    assert _get(backend, "/health", {}).status_code == 200
    assert _get(backend, "/openapi.json", {}).status_code == 200
    assert _get(backend, "/docs", {}).status_code == 200
    # a broken credential on a public route is ignored rather than refused
    assert _get(backend, "/health", bad).status_code == 200


def test_api_keys_lifecycle(backend, admin, cid):
    with backend.http(roles=["SUPER_USER"], subject="root") as su:
        push_empty(su, cid, "open")
        push_empty(su, cid, "admins", required_roles=["ADMIN"])

    r = admin.post("/auth/api-keys", json={"roles": ["USER"], "description": "ci reader", "expires_in_days": 7})
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("pdcat_")
    assert created["roles"] == ["USER"]
    assert created["subject"] == "alice-admin"
    assert created["created_by"] == "alice-admin"
    assert created["description"] == "ci reader"
    assert created["revoked"] is False
    assert created["expires_at"]
    assert "secret_hash" not in created
    key_id = created["id"]

    with backend.http(anonymous=True, headers={"X-Api-Key": key}) as k:
        who = k.get("/auth/whoami").json()
        assert (who["subject"], who["roles"], who["via"]) == ("alice-admin", ["USER"], "api_key")
        # the same RBAC as a token with these roles
        assert k.get(f"/catalog/{cid}/open/x86_64").status_code == 200
        assert k.post(f"/catalog/{cid}/open/x86_64/pull").status_code == 200
        assert_error(k.get(f"/catalog/{cid}/admins/x86_64"), 404, "not_found")
        assert_error(k.post(f"/catalog/{cid}/admins/x86_64/pull"), 404, "not_found")
        assert {m["version"] for m in k.get(f"/catalog/{cid}").json()["items"]} == {"open"}
        push = k.post(f"/catalog/{cid}/2.0/x86_64/push", json={"index": {"chunk_size": 4096, "files": []}})
        assert_error(push, 403, "forbidden")
        assert_error(k.patch(f"/catalog/{cid}/open/x86_64/taint"), 403, "forbidden")
        assert_error(k.get("/auth/api-keys"), 403, "forbidden")
        # a wrong secret for a real key id
        wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        assert_error(_get(backend, "/auth/whoami", {"X-Api-Key": wrong}), 401, "unauthenticated")

        listed = admin.get("/auth/api-keys")
        assert listed.status_code == 200
        items = listed.json()["items"]
        mine = [i for i in items if i["id"] == key_id]
        assert len(mine) == 1
        assert mine[0]["roles"] == ["USER"]
        for item in items:
            assert "key" not in item
            assert "secret_hash" not in item
            assert "secret" not in item
        assert key not in listed.text
        secret = key.split("_", 2)[2]  # pdcat_<key_id>_<secret>; the secret itself may hold "_"
        assert secret not in listed.text

        revoked = admin.delete(f"/auth/api-keys/{key_id}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked"] is True
        assert revoked.json()["revoked_by"] == "alice-admin"
        assert revoked.json()["revoked_at"]
        assert_error(k.get("/auth/whoami"), 401, "unauthenticated")
        assert_error(k.get(f"/catalog/{cid}/open/x86_64"), 401, "unauthenticated")
    again = admin.delete(f"/auth/api-keys/{key_id}")
    assert again.status_code == 200 and again.json()["revoked"] is True
    assert_error(admin.delete("/auth/api-keys/ffffffffffffffff"), 404, "not_found")


def test_an_api_key_with_publisher_rights_can_push(backend, admin, cid):
    key = admin.post("/auth/api-keys", json={"roles": ["PUBLISHER"], "service_account": "ci-bot"}).json()["key"]
    with backend.http(anonymous=True, headers={"X-Api-Key": key}) as k:
        pushed = push_empty(k, cid, "1.0")
        assert pushed["created_by"] == "svc:alice-admin/ci-bot"
        assert_error(k.delete(f"/catalog/{cid}/1.0/x86_64"), 403, "forbidden")


def test_an_api_key_never_carries_more_than_its_creator(backend):
    with backend.http(roles=["PUBLISHER"], claims=["MANAGE_API_KEYS"], subject="pub-keys") as c:
        for body in (
            {"roles": ["ADMIN"]},
            {"roles": ["SUPER_USER"]},
            {"roles": ["USER", "QA"]},
            {"claims": ["DELETE_CATALOG_MANIFEST"]},
            {"claims": ["REVOKE_CATALOG_MANIFEST"], "roles": ["USER"]},
        ):
            assert_error(c.post("/auth/api-keys", json=body), 403, "forbidden")
        ok = c.post("/auth/api-keys", json={"roles": ["USER"], "claims": ["PUSH_CATALOG_MANIFEST"]})
        assert ok.status_code == 201, ok.text
        assert c.post("/auth/api-keys", json={"roles": ["PUBLISHER"]}).status_code == 201
    with backend.http(roles=["ADMIN"], subject="adm") as c:
        assert_error(c.post("/auth/api-keys", json={"roles": ["SUPER_USER"]}), 403, "forbidden")
        assert c.post("/auth/api-keys", json={"claims": ["MANAGE_API_KEYS"]}).status_code == 201
    with backend.http(roles=["SUPER_USER"], subject="root") as c:
        r = c.post("/auth/api-keys", json={"roles": ["SUPER_USER"], "claims": ["ANYTHING"]})
        assert r.status_code == 201
        assert r.json()["roles"] == ["SUPER_USER"]


def test_api_key_bad_input_is_400(admin):
    for body in (
        {"roles": "USER"},
        {"roles": ["not a role"]},
        {"claims": [1]},
        {"expires_in_days": 0},
        {"expires_in_days": 100000},
        {"expires_in_days": "7"},
        {"expires_in_days": True},
        {"subject": "carol"},
        {"service_account": ""},
        {"service_account": 5},
        {"service_account": "x" * 200},
        {"description": 5},
        {"description": "x" * 5000},
    ):
        assert_error(admin.post("/auth/api-keys", json=body), 400, "invalid_input")


def _admin_password(backend) -> str:
    """After a first start the embedded server keeps the admin password in its data folder."""
    if backend.server is None:
        pytest.skip("password login is supported, but the suite only knows the embedded server's admin password")
    return (Path(backend.server.data_dir) / "initial-admin-password").read_text().strip()


def test_password_login(backend):
    if not backend.supports_password_login:
        pytest.skip(f"{backend.name} has no built-in users: it authenticates through its identity provider")
    password = _admin_password(backend)
    url = backend.api_url + "/auth/token"
    r = plain.post(url, json={"username": "admin", "password": password})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"token", "expires_at"}
    who = _get(backend, "/auth/whoami", _bearer(answer["token"])).json()
    assert who["subject"] == "admin"
    assert who["roles"] == ["SUPER_USER"]

    for body in ({"username": "admin", "password": password + "x"}, {"username": "nobody", "password": password}):
        error = assert_error(plain.post(url, json=body), 401, "unauthenticated")
        assert password not in error["message"]
    for body in ({}, {"username": "admin"}, {"username": 1, "password": 2}, {"password": password}):
        assert_error(plain.post(url, json=body), 400, "invalid_input")
    assert_error(plain.post(url, content=b"{not json"), 400, "invalid_input")


def test_401_names_the_scheme(backend):
    with backend.http(anonymous=True) as anon:
        r = anon.get("/catalog")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")

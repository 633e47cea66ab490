"""``POST /auth/refresh``: a password login's still-valid token for a new one of the same session.

Only where users log in with a password (the embedded server); elsewhere the route does not exist. The
new token carries the user's current roles and claims and the session's original ``auth_time``; an API
key, another issuer's token, an expired one, a removed user, a password set since the login and a
session older than the server's limit (7 days by default) are refused with 401.
"""

from __future__ import annotations

import secrets
import time
import uuid

import httpx
import jwt
import pytest

from tests.backend_names import BACKENDS, PASSWORD_LOGIN_BACKENDS
from tests.contract.helpers import assert_error

WEEK = 7 * 24 * 3600  # PDCAT_SESSION_MAX_SECONDS' default; the contract backends keep it


@pytest.fixture(params=PASSWORD_LOGIN_BACKENDS)
def backend(request: pytest.FixtureRequest, started_backends):
    """Only the backends with password login (``su`` and the rest follow): elsewhere there is no route,
    which ``test_only_a_server_with_password_login_has_the_route`` checks."""
    return started_backends(request.param)


@pytest.fixture
def logins(backend):
    assert backend.supports_password_login
    return backend


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post(backend, path: str, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    with backend.http(anonymous=True) as anonymous:
        return anonymous.post(path, headers=headers or {}, **kwargs)


def _add_user(su: httpx.Client, roles: list[str], claims: list[str] | None = None) -> tuple[str, str]:
    name, password = f"r-{uuid.uuid4().hex[:12]}", "pw-" + secrets.token_hex(8)
    body = {"username": name, "password": password, "roles": roles, "claims": claims or []}
    r = su.post("/admin/users", json=body)
    assert r.status_code == 201, r.text
    return name, password


def _login(backend, name: str, password: str) -> str:
    r = _post(backend, "/auth/token", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def _refresh(backend, token: str) -> httpx.Response:
    return _post(backend, "/auth/refresh", _bearer(token))


def _refreshed(backend, token: str) -> str:
    r = _refresh(backend, token)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"token", "expires_at"}
    new: str = answer["token"]
    return new


def _refused(backend, token: str, *words: str) -> str:
    message = assert_error(_refresh(backend, token), 401, "unauthenticated")["message"]
    assert token not in message
    for word in words:
        assert word in message, message
    return message


def _whoami(backend, token: str) -> dict:
    with backend.http(anonymous=True) as anonymous:
        r = anonymous.get("/auth/whoami", headers=_bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def _claims(backend, token: str) -> dict:
    return jwt.decode(token, backend.jwt_secret, algorithms=["HS256"])


def _minted(backend, subject: str, roles: list[str], *, auth_time: float | None, iat: float, exp: float) -> str:
    """A token signed with the server's own secret, as only its logins (or a holder of the secret) make."""
    payload: dict = {"sub": subject, "roles": roles, "claims": [], "iat": int(iat), "exp": int(exp)}
    if auth_time is not None:
        payload["auth_time"] = auth_time
    return jwt.encode(payload, backend.jwt_secret, algorithm="HS256")


def test_a_login_is_refreshed_into_the_same_session(logins, su) -> None:
    name, password = _add_user(su, ["USER"])
    token = _login(logins, name, password)
    first = _claims(logins, token)
    assert isinstance(first["auth_time"], int | float) and first["auth_time"] <= time.time()

    renewed = _refreshed(logins, token)
    second = _claims(logins, renewed)
    assert second["auth_time"] == first["auth_time"]  # the session's start travels unchanged
    assert second["sub"] == name and second["exp"] >= first["exp"]
    assert _whoami(logins, renewed) == {
        "subject": name,
        "roles": ["USER"],
        "claims": ["LIST_CATALOG_MANIFEST", "PULL_CATALOG_MANIFEST"],
        "via": "token",
    }
    assert _claims(logins, _refreshed(logins, renewed))["auth_time"] == first["auth_time"]  # and again


def test_a_refresh_carries_the_users_current_roles_and_claims(logins, su) -> None:
    name, password = _add_user(su, ["USER"])
    token = _login(logins, name, password)

    r = su.put(f"/admin/users/{name}/roles", json={"roles": ["PUBLISHER"], "claims": ["DELETE_CATALOG_MANIFEST"]})
    assert r.status_code == 200, r.text
    assert _whoami(logins, token)["roles"] == ["USER"]  # a token keeps the roles it was issued with
    promoted = _refreshed(logins, token)
    who = _whoami(logins, promoted)
    assert who["roles"] == ["PUBLISHER"]
    assert {"PUSH_CATALOG_MANIFEST", "DELETE_CATALOG_MANIFEST"} <= set(who["claims"])

    r = su.put(f"/admin/users/{name}/roles", json={"roles": ["USER"], "claims": []})
    assert r.status_code == 200, r.text
    demoted = _refreshed(logins, promoted)
    who = _whoami(logins, demoted)
    assert who["roles"] == ["USER"]  # a removed role is gone, and so is its claim
    assert not {"PUSH_CATALOG_MANIFEST", "DELETE_CATALOG_MANIFEST"} & set(who["claims"])
    with logins.http(anonymous=True) as anonymous:
        r = anonymous.delete(f"/catalog/t-{uuid.uuid4().hex[:8]}", headers=_bearer(demoted))
    assert_error(r, 403, "forbidden")


def test_an_api_key_is_not_refreshed(logins, su) -> None:
    r = su.post("/auth/api-keys", json={"roles": ["USER"]})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    message = assert_error(_post(logins, "/auth/refresh", {"X-Api-Key": key}), 401, "unauthenticated")["message"]
    assert "API key" in message and key not in message
    assert_error(_post(logins, "/auth/refresh"), 401, "unauthenticated")  # and nobody without credentials


def test_another_issuers_token_is_not_refreshed(logins, su) -> None:
    name, _ = _add_user(su, ["USER"])
    now = time.time()
    # signed with the server's secret, but not from a password login (no auth_time): a token the operator
    # minted, or another system sharing the secret
    _refused(logins, _minted(logins, name, ["USER"], auth_time=None, iat=now, exp=now + 600), "password login")
    # signed by anyone else (an identity provider, a forger)
    foreign = jwt.encode(
        {"sub": name, "roles": ["USER"], "iat": int(now), "exp": int(now) + 600, "auth_time": now},
        "another-issuer-" + secrets.token_hex(24),
        algorithm="HS256",
    )
    _refused(logins, foreign, "signature")
    _refused(logins, "not-a-token", "malformed")


def test_an_expired_token_is_not_refreshed(logins, su) -> None:
    name, _ = _add_user(su, ["USER"])
    now = time.time()
    _refused(logins, _minted(logins, name, ["USER"], auth_time=now - 200, iat=now - 200, exp=now - 100), "expired")
    # expired moments ago: a server may accept it for a call (clock leeway), but never renews it
    _refused(logins, _minted(logins, name, ["USER"], auth_time=now - 60, iat=now - 60, exp=now - 2), "expired")


def test_a_removed_or_recreated_user_is_not_refreshed(logins, su) -> None:
    name, password = _add_user(su, ["USER"])
    token = _login(logins, name, password)
    assert su.delete(f"/admin/users/{name}").status_code == 204
    _refused(logins, token, "no longer exists")

    r = su.post("/admin/users", json={"username": name, "password": password, "roles": ["ADMIN"]})
    assert r.status_code == 201, r.text
    _refused(logins, token, "password changed")  # a new account under the old name is not the old session


def test_a_password_set_after_the_login_ends_the_session(logins, su) -> None:
    name, password = _add_user(su, ["USER"])
    token = _login(logins, name, password)
    renewed = _refreshed(logins, token)
    new_password = "pw-" + secrets.token_hex(8)
    assert su.put(f"/admin/users/{name}/password", json={"password": new_password}).status_code == 204
    _refused(logins, token, "password changed")
    _refused(logins, renewed, "password changed")  # every token of the session
    _refreshed(logins, _login(logins, name, new_password))  # a login after the change is a new session

    # the user's own change ends their other sessions too (here: the one they changed it from)
    own = _login(logins, name, new_password)
    with logins.http(anonymous=True) as anonymous:
        body = {"password": password, "current_password": new_password}
        r = anonymous.put(f"/admin/users/{name}/password", json=body, headers=_bearer(own))
    assert r.status_code == 204, r.text
    _refused(logins, own, "password changed")


def test_a_session_older_than_the_limit_is_not_refreshed(logins, su) -> None:
    """(That no token outlives its session is tests/unit/test_logins.py's, on a clock it turns.)"""
    name, _ = _add_user(su, ["USER"])
    now = time.time()
    old = _minted(logins, name, ["USER"], auth_time=now - WEEK - 60, iat=now - 60, exp=now + 600)
    _refused(logins, old, "older than")


@pytest.mark.parametrize("name", [name for name in BACKENDS if name not in PASSWORD_LOGIN_BACKENDS])
def test_only_a_server_with_password_login_has_the_route(name: str, started_backends) -> None:
    other = started_backends(name)
    assert not other.supports_password_login
    with other.http(roles=["SUPER_USER"], subject="root") as su:
        r = su.post("/auth/refresh")
    assert "no such route" in assert_error(r, 404, "not_found")["message"]

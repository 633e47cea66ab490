"""The embedded server's sessions (``core.local.logins``) over a user store in memory: what the HTTP
contract cannot reach, because its users' passwords are always newer than a session minted in the past.
"""

from __future__ import annotations

import time

import jwt
import pytest

from core.auth import issue_token
from core.errors import Unauthenticated
from core.local.logins import PasswordLogins
from core.rbac import Principal
from core.users import User

SECRET = "unit-tests-" + "s" * 32
TTL, MAX = 600, 3600


class _Users:
    def __init__(self, *users: User) -> None:
        self.users = {u.username: u for u in users}

    def get(self, username: str) -> User | None:
        return self.users.get(username)

    def create(self, user: User) -> None:
        self.users[user.username] = user

    def list_all(self) -> list[User]:
        return list(self.users.values())

    def replace(self, user: User) -> None:
        self.users[user.username] = user

    def delete(self, username: str) -> None:
        del self.users[username]


@pytest.fixture(scope="module")
def logins() -> PasswordLogins:
    # a record from before pdcat kept password_changed_at: no password time to compare with
    old = User("olga", "unused", ["USER"], [], "2020-01-01T00:00:00.000000Z")
    return PasswordLogins(_Users(old), SECRET, ttl_seconds=TTL, max_session_seconds=MAX)


def _session(auth_time: float) -> str:
    return issue_token(SECRET, "olga", ["USER"], [], 60, auth_time=auth_time)[0]


def _refresh(logins: PasswordLogins, token: str) -> dict[str, object]:
    answer = logins.refresh(Principal.of("olga", ["USER"]), f"Bearer {token}")
    claims: dict[str, object] = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    return claims


def test_a_refreshed_token_lasts_its_ttl_while_the_session_has_longer(logins: PasswordLogins) -> None:
    began = time.time() - 60
    claims = _refresh(logins, _session(began))
    assert claims["auth_time"] == began
    assert claims["exp"] - claims["iat"] == TTL  # type: ignore[operator]


def test_no_token_outlives_its_session(logins: PasswordLogins) -> None:
    began = time.time() - MAX + 100  # 100 s of the session left, less than a TTL
    claims = _refresh(logins, _session(began))
    assert claims["exp"] <= began + MAX
    assert 95 <= claims["exp"] - claims["iat"] <= 100  # type: ignore[operator]


def test_a_session_at_its_end_is_not_refreshed(logins: PasswordLogins) -> None:
    with pytest.raises(Unauthenticated, match="older than 3600 s"):
        _refresh(logins, _session(time.time() - MAX))


def test_auth_time_must_be_a_moment(logins: PasswordLogins) -> None:
    for bad in ("yesterday", True, -5, float("nan")):
        token = jwt.encode({"sub": "olga", "iat": int(time.time()), "exp": int(time.time()) + 60, "auth_time": bad},
                           SECRET, algorithm="HS256")  # fmt: skip
        with pytest.raises(Unauthenticated, match="does not come from a password login"):
            logins.refresh(Principal.of("olga"), f"Bearer {token}")

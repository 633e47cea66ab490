"""The embedded server's sessions (``core.local.logins``) over a user store in memory: what the HTTP
contract cannot reach, a session that began in the past (the server's clock turned back for its login)
and a password changed while a login checks the old one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest

from core.errors import Unauthenticated
from core.local.logins import PasswordLogins
from core.manifest import now_iso
from core.passwords import hash_password, verify_password
from core.rbac import Principal
from core.users import User, UserAdmin

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

    def replace(self, user: User, previous: User) -> None:
        assert self.users[user.username] == previous
        self.users[user.username] = user

    def delete(self, username: str) -> None:
        del self.users[username]


class _Clock:
    """The server's clock, turned back for a login that began in the past."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


PASSWORD = "p" * 16
_OLGA = User("olga", hash_password(PASSWORD), ["USER"], [], "2020-01-01T00:00:00.000000Z")


@pytest.fixture(scope="module")
def clock() -> _Clock:
    return _Clock()


@pytest.fixture(scope="module")
def logins(clock: _Clock) -> PasswordLogins:
    return PasswordLogins(_Users(_OLGA), SECRET, ttl_seconds=TTL, max_session_seconds=MAX, clock=clock)


@pytest.fixture
def login_at(logins: PasswordLogins, clock: _Clock) -> Callable[[float], str]:
    """A token of a login that began at ``auth_time`` (the clock turned back for the login only)."""

    def login_at(auth_time: float) -> str:
        clock.offset = auth_time - time.time()
        try:
            token: str = logins.login("olga", PASSWORD)["token"]
        finally:
            clock.offset = 0.0
        return token

    return login_at


def _refresh(logins: PasswordLogins, token: str) -> dict[str, object]:
    answer = logins.refresh(Principal.of("olga", ["USER"]), f"Bearer {token}")
    claims: dict[str, object] = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    return claims


def test_a_refreshed_token_lasts_its_ttl_while_the_session_has_longer(
    logins: PasswordLogins, login_at: Callable[[float], str]
) -> None:
    began = time.time() - 60
    claims = _refresh(logins, login_at(began))
    assert claims["auth_time"] == pytest.approx(began)
    assert claims["exp"] - claims["iat"] == TTL  # type: ignore[operator]


def test_no_token_outlives_its_session(logins: PasswordLogins, login_at: Callable[[float], str]) -> None:
    began = time.time() - MAX + 100  # 100 s of the session left, less than a TTL
    claims = _refresh(logins, login_at(began))
    assert claims["exp"] <= began + MAX
    assert 95 <= claims["exp"] - claims["iat"] <= 100  # type: ignore[operator]


def test_a_session_at_its_end_is_not_refreshed(logins: PasswordLogins, login_at: Callable[[float], str]) -> None:
    with pytest.raises(Unauthenticated, match="older than 3600 s"):
        _refresh(logins, login_at(time.time() - MAX))


def test_auth_time_must_be_a_moment(logins: PasswordLogins) -> None:
    for bad in ("yesterday", True, -5, float("nan")):
        token = jwt.encode({"sub": "olga", "iat": int(time.time()), "exp": int(time.time()) + 60, "auth_time": bad},
                           SECRET, algorithm="HS256")  # fmt: skip
        with pytest.raises(Unauthenticated, match="does not come from a password login"):
            logins.refresh(Principal.of("olga"), f"Bearer {token}")


class _ChangedDuringLogin(_Users):
    """A user store where a SUPER_USER sets the user's password right after a login has read the old
    record: what happens when the change lands while the login spends its password check."""

    admin: UserAdmin
    change_on_next_read = False

    def get(self, username: str) -> User | None:
        user = super().get(username)
        if self.change_on_next_read:
            self.change_on_next_read = False
            self.admin.set_password(Principal.of("root", ["SUPER_USER"]), username, {"password": "n" * 16})
        return user


def test_a_password_set_while_a_login_checks_the_old_one_ends_that_login_too() -> None:
    old = "o" * 16
    users = _ChangedDuringLogin(User("vera", hash_password(old), ["USER"], [], now_iso()))
    users.admin = UserAdmin(users, hash_password, verify_password, now_iso)
    logins = PasswordLogins(users, SECRET, ttl_seconds=TTL, max_session_seconds=MAX)

    users.change_on_next_read = True
    token = logins.login("vera", old)["token"]  # the old password was right when the login read it
    assert not verify_password(old, users.users["vera"].password_hash)

    # an attacker who knows the old password and logs in over and over always has one login in flight
    # when the password changes: that login's session must end with the change, like every other one
    with pytest.raises(Unauthenticated, match="password changed"):
        logins.refresh(Principal.of("vera", ["USER"]), f"Bearer {token}")

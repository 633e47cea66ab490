"""The embedded server's own users, and who may manage them (``/admin/users``, ``pdcat user``).

Only a SUPER_USER manages users. Two rules keep one super user from locking out another, or a stolen
token from taking over an account:

- a SUPER_USER manages the other users, but not another SUPER_USER and not itself (its roles stay,
  it cannot remove itself): the bootstrap ``admin`` can only be changed by ``admin``;
- anyone changes their own password only by giving the current one.

Passwords are hashed with argon2id (``core.passwords``) and at least ``MIN_PASSWORD`` characters
long. A role change applies from the user's next login or token refresh: a token carries the roles it
was issued with until it expires. A password set (changed, or a new account under an old name) ends
every session that began with another one: each new hash has a fresh salt, and ``POST /auth/refresh``
renews only a session whose password hash is still the user's (``core.local.logins``).

A change writes the whole record back only over the record it read (``UserStore.replace``), else 409:
a user changing their own password over and over (two password checks between read and write) would
otherwise write back the roles a SUPER_USER just took away, and a role change the hash a reset replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.rbac import ALL_CLAIMS, Principal, Role

__all__ = ["MIN_PASSWORD", "User", "UserAdmin", "UserStore"]

MIN_PASSWORD = 12
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ROLES = frozenset(r.value for r in Role)


@dataclass(frozen=True)
class User:
    """A built-in user of the embedded server. ``password_hash`` is a hash, never the password."""

    username: str
    password_hash: str
    roles: list[str]
    claims: list[str]
    created_at: str

    def __repr__(self) -> str:
        return f"User(username={self.username!r}, roles={self.roles!r}, claims={self.claims!r})"

    def to_public(self) -> dict[str, Any]:
        return {"username": self.username, "roles": self.roles, "claims": self.claims, "created_at": self.created_at}


class UserStore(Protocol):
    def get(self, username: str) -> User | None: ...

    def create(self, user: User) -> None: ...

    def list_all(self) -> list[User]: ...

    def replace(self, user: User, previous: User) -> None:
        """Write ``user`` over ``previous``, the record as it was read: ``Conflict`` if it changed since
        (two changes at once must not silently undo one another), ``NotFound`` if it is gone."""
        ...

    def delete(self, username: str) -> None: ...


class UserAdmin:
    """The use cases behind ``/admin/users`` (see the module's docstring for the rules)."""

    def __init__(
        self,
        store: UserStore,
        hash_password: Callable[[str], str],
        verify_password: Callable[[str, str], bool],
        now: Callable[[], str],
    ) -> None:
        self._store, self._hash, self._verify, self._now = store, hash_password, verify_password, now

    def list(self, who: Principal) -> list[dict[str, Any]]:
        _super_user(who)
        return [u.to_public() for u in sorted(self._store.list_all(), key=lambda u: u.username)]

    def add(self, who: Principal, body: dict[str, Any]) -> dict[str, Any]:
        _super_user(who)
        _only(body, {"username", "password", "roles", "claims"})
        username = _username(body.get("username"))
        user = User(
            username,
            self._hash(_password(body.get("password"))),
            _names(body.get("roles", []), _ROLES, "roles"),
            _names(body.get("claims", []), ALL_CLAIMS, "claims"),
            self._now(),
        )
        self._store.create(user)  # Conflict if the name is taken
        return user.to_public()

    def remove(self, who: Principal, username: str) -> None:
        self._store.delete(self._managed(who, username).username)

    def set_roles(self, who: Principal, username: str, body: dict[str, Any]) -> dict[str, Any]:
        user = self._managed(who, username)
        _only(body, {"roles", "claims"})
        roles = _names(body.get("roles", user.roles), _ROLES, "roles")
        claims = _names(body.get("claims", user.claims), ALL_CLAIMS, "claims")
        changed = replace(user, roles=roles, claims=claims)
        self._store.replace(changed, user)
        return changed.to_public()

    def set_password(self, who: Principal, username: str, body: dict[str, Any]) -> None:
        _only(body, {"password", "current_password"})
        password = _password(body.get("password"))
        if who.subject == username and who.via == "token":
            user = self._store.get(username)
            current = body.get("current_password")
            if user is None or not isinstance(current, str) or not self._verify(current, user.password_hash):
                raise Forbidden("give your current password (current_password) to change it")
        else:
            user = self._managed(who, username)
        self._store.replace(replace(user, password_hash=self._hash(password)), user)

    def _managed(self, who: Principal, username: str) -> User:
        """A user this SUPER_USER may change: not itself, not another SUPER_USER."""
        _super_user(who)
        user = self._store.get(username)
        if user is None:
            raise NotFound(f"no user {username[:64]!r}")
        if user.username == who.subject:
            raise Conflict("you cannot remove yourself or change your own roles")
        if Role.SUPER_USER.value in user.roles:
            raise Forbidden(f"{user.username} is a SUPER_USER: only they can change their account")
        return user


def _super_user(who: Principal) -> None:
    if who.via != "token" or Role.SUPER_USER.value not in who.roles:
        raise Forbidden("only a SUPER_USER, logged in with a password, manages users")


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)[:120]}; expected {', '.join(sorted(allowed))}")


def _username(value: object) -> str:
    if not isinstance(value, str) or not _USERNAME.fullmatch(value):
        raise InvalidInput("username must be 1-64 of a-z 0-9 . _ -, starting with a letter or digit")
    return value


def _password(value: object) -> str:
    if not isinstance(value, str) or len(value) < MIN_PASSWORD or len(value) > 1024:
        raise InvalidInput(f"a password has {MIN_PASSWORD} to 1024 characters")
    return value


def _names(values: object, known: Iterable[str], what: str) -> list[str]:
    allowed = frozenset(known)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"{what} must be a list of names")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise InvalidInput(f"unknown {what}: {', '.join(unknown)[:120]}; known: {', '.join(sorted(allowed))}")
    return sorted(set(values))

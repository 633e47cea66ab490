"""The embedded server's password logins: a token for a password (``POST /auth/token``) and a new token
for a session's still-valid one (``POST /auth/refresh``).

A session begins when a user gives their password; every token of it carries that moment as
``auth_time``, unchanged from refresh to refresh, so the server can end the session without keeping
any state of its own:

- a refresh answers the user's *current* roles and claims (a role change or removal applies from it);
- it is refused once the user is gone, once the user's password is no longer the one the session
  began with, and once the session is older than ``PDCAT_SESSION_MAX_SECONDS``, which no token
  outlives (the last one is cut short);
- only tokens this server signed and marked with ``auth_time`` are refreshed: not an API key (it lasts
  until it expires or is revoked) and not an identity provider's token (the provider renews its own).

"The password the session began with" is a mark every token of it carries (``pw_mark``): an HMAC,
under the server's secret, of the password *hash* the login checked. A password set since (by the user
or a SUPER_USER) or a new account under the same name has a new hash (a fresh salt), so a new mark, and
the session ends. The mark is taken from the very record the login checked the password against, not
from the clock: a login that read the old hash while the password was being changed (an attacker
logging in over and over with a stolen password always has one in flight) starts a session that the
change ends like every other. The token reveals nothing of the hash (a keyed digest of it).

Tokens are checked here with no clock leeway: this process issues and checks them on one clock, so an
expired token is never renewed, even seconds late.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeGuard

from core.auth import AuthConfig, TokenVerifier, bearer_token, issue_token
from core.errors import Unauthenticated
from core.passwords import hash_password, verify_password
from core.rbac import Principal
from core.users import User, UserStore

__all__ = ["PasswordLogins"]

_BAD_LOGIN = "invalid username or password"
_NOT_A_LOGIN = "only a token from a password login on this server ('pdcat login') is refreshed"


class PasswordLogins:
    """Sessions of the users in ``users``, signed with ``secret`` (the embedded server's HS256 secret)."""

    def __init__(
        self,
        users: UserStore,
        secret: str,
        *,
        ttl_seconds: int,
        max_session_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._secret = secret
        self._ttl = ttl_seconds
        self._max = max_session_seconds
        self._clock = clock
        self._verifier = TokenVerifier(AuthConfig(jwt_secret=secret, leeway_seconds=0))
        # An unknown user name is checked against this hash, so it costs the same hashing work as a known one.
        self._dummy_hash = hash_password(secrets.token_urlsafe(32))

    def login(self, username: str, password: str) -> dict[str, Any]:
        """``{"token", "expires_at"}`` for a user's password: a new session begins now."""
        began = self._clock()
        user = self._users.get(username)
        if user is None:
            verify_password(password, self._dummy_hash)
            raise Unauthenticated(_BAD_LOGIN)
        if not verify_password(password, user.password_hash):
            raise Unauthenticated(_BAD_LOGIN)
        return self._issue(user, began, self._max)

    def refresh(self, who: Principal, authorization: str) -> dict[str, Any]:
        """A new token of the same session for ``who``, who authenticated with ``authorization``."""
        if who.via != "token":
            raise Unauthenticated("an API key is not refreshed: it lasts until it expires or is revoked")
        try:
            payload = self._verifier.claims(bearer_token(authorization))
        except Unauthenticated as exc:
            raise Unauthenticated(f"{exc.message}: {_NOT_A_LOGIN}") from exc
        auth_time, subject = payload.get("auth_time"), payload.get("sub")
        if not _is_time(auth_time) or not isinstance(subject, str):
            raise Unauthenticated(f"this token does not come from a password login: {_NOT_A_LOGIN}")
        left = self._left(auth_time)
        user = self._users.get(subject)
        if user is None:
            raise Unauthenticated(f"the user {subject[:64]!r} no longer exists")
        if not hmac.compare_digest(str(payload.get("pw_mark", "")), self._password_mark(user)):
            raise Unauthenticated("the password changed after this login")
        return self._issue(user, auth_time, left)

    def _left(self, auth_time: float) -> int:
        """Whole seconds the session that began at ``auth_time`` has left; refused when none."""
        left = math.floor(auth_time + self._max - self._clock())
        if left < 1:
            raise Unauthenticated(f"this login is older than {self._max} s, the longest a session lasts here")
        return left

    def _issue(self, user: User, auth_time: float, left: int) -> dict[str, Any]:
        """A token with the user's current roles, lasting its TTL but never past the session's end."""
        token, expires_at = issue_token(
            self._secret,
            user.username,
            user.roles,
            user.claims,
            min(self._ttl, left),
            auth_time=auth_time,
            password_mark=self._password_mark(user),
        )
        return {"token": token, "expires_at": expires_at}

    def _password_mark(self, user: User) -> str:
        """Names the user's current password hash (see the module's docstring)."""
        digest = hmac.new(self._secret.encode(), b"pw_mark\0" + user.password_hash.encode(), hashlib.sha256)
        return digest.hexdigest()[:32]


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0

"""The embedded server's password logins: a token for a password (``POST /auth/token``) and a new token
for a session's still-valid one (``POST /auth/refresh``).

A session begins when a user gives their password; every token of it carries that moment as
``auth_time``, unchanged from refresh to refresh, so the server can end the session without keeping
any state of its own:

- a refresh answers the user's *current* roles and claims (a role change or removal applies from it);
- it is refused once the user is gone, once the password was set after the session began (a changed
  password ends every older session; so does a new account under an old name), and once the session is
  older than ``PDCAT_SESSION_MAX_SECONDS``, which no token outlives (the last one is cut short);
- only tokens this server signed and marked with ``auth_time`` are refreshed: not an API key (it lasts
  until it expires or is revoked) and not an identity provider's token (the provider renews its own).

Tokens are checked here with no clock leeway: this process issues and checks them on one clock, so an
expired token is never renewed, even seconds late.
"""

from __future__ import annotations

import math
import secrets
import time
from datetime import datetime
from typing import Any, TypeGuard

from core.auth import AuthConfig, TokenVerifier, bearer_token, hash_password, issue_token, verify_password
from core.errors import Unauthenticated
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
    ) -> None:
        self._users = users
        self._secret = secret
        self._ttl = ttl_seconds
        self._max = max_session_seconds
        self._verifier = TokenVerifier(AuthConfig(jwt_secret=secret, leeway_seconds=0))
        # An unknown user name is checked against this hash, so it costs the same scrypt work as a known one.
        self._dummy_hash = hash_password(secrets.token_urlsafe(32))

    def login(self, username: str, password: str) -> dict[str, Any]:
        """``{"token", "expires_at"}`` for a user's password: a new session begins now."""
        user = self._users.get(username)
        if user is None:
            verify_password(password, self._dummy_hash)
            raise Unauthenticated(_BAD_LOGIN)
        if not verify_password(password, user.password_hash):
            raise Unauthenticated(_BAD_LOGIN)
        return self._issue(user, time.time(), self._max)

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
        if _password_set_since(user, auth_time):
            raise Unauthenticated("the password changed after this login")
        return self._issue(user, auth_time, left)

    def _left(self, auth_time: float) -> int:
        """Whole seconds the session that began at ``auth_time`` has left; refused when none."""
        left = math.floor(auth_time + self._max - time.time())
        if left < 1:
            raise Unauthenticated(f"this login is older than {self._max} s, the longest a session lasts here")
        return left

    def _issue(self, user: User, auth_time: float, left: int) -> dict[str, Any]:
        """A token with the user's current roles, lasting its TTL but never past the session's end."""
        token, expires_at = issue_token(
            self._secret, user.username, user.roles, user.claims, min(self._ttl, left), auth_time=auth_time
        )
        return {"token": token, "expires_at": expires_at}


def _is_time(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _password_set_since(user: User, auth_time: float) -> bool:
    """Whether the password was set at or after the session began (an unreadable time counts as yes:
    it must not keep a session alive)."""
    if user.password_changed_at is None:
        return False
    try:
        changed = datetime.fromisoformat(user.password_changed_at).timestamp()
    except ValueError:
        return True
    return changed >= auth_time

"""A password login's token, refreshed before it runs out (``POST /auth/refresh``) and saved again.

A push of a 100 GB VM can take longer than a token lives (``PDCAT_TOKEN_TTL_SECONDS``, 12 h by
default); its commit must not fail because the token expired on the way. So before each catalog call
the client checks the token it holds: once less than a margin of its life is left (a quarter of it,
at least a minute, at most half of it), it asks the catalog for a new one of the same session, and
keeps that, in memory and, for the stored login, on disk (``client.config``) for the next command.

What is never refreshed: a token from ``PDCAT_TOKEN`` (it is used as given and never written anywhere;
it comes without ``expires_at``) and API keys. A refresh the catalog refuses (a changed password, a
removed user, a session past the server's limit) is said once as a warning while the token still
works, and becomes the error, with "log in again", once it does not. A catalog without the route (an
older ``pdcat serve``) keeps the token as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from client.config import Credentials, save_credentials
from core.errors import NotFound, Unauthenticated

__all__ = ["RefreshingToken", "Renew", "stored_login"]

log = logging.getLogger("pdcat.login")

Renew = Callable[[str], dict[str, Any]]
"""The catalog's ``POST /auth/refresh`` for a token: its answer, ``{"token", "expires_at"}``."""

_MIN_MARGIN = 60.0


@dataclass(frozen=True)
class _Life:
    issued: float | None  # the token's iat, when it can be read
    expires: float | None  # its exp, else the login's expires_at


class RefreshingToken:
    """The bearer token of one login, safe to share between the threads of a transfer.

    ``store``: called with ``(previous token, new token, expires_at)`` after each refresh, to keep the
    new one (the stored login's is written to the credentials file); None keeps it in memory only.
    """

    def __init__(
        self,
        token: str,
        expires_at: str | None,
        *,
        username: str | None = None,
        store: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.username = username
        self._token = token
        self._life = _life(token, expires_at)
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._refused: Unauthenticated | None = None
        self._settled = False  # no refresh to try any more: refused, final, or no route for it

    def __repr__(self) -> str:  # never the token
        return f"RefreshingToken(username={self.username!r})"

    def current(self, renew: Renew) -> str:
        """The token to send now: refreshed first when its time has come."""
        with self._lock:
            if self._settled or not self._due():
                return self._unless_refused(self._token)
            try:
                answer = renew(self._token)
            except NotFound:  # a catalog without /auth/refresh: the token lasts as long as it lasts
                self._settled = True
                return self._token
            except Unauthenticated as exc:
                self._settled, self._refused = True, exc
                if not self._expired():
                    log.warning("your login was not renewed; it works until its token expires: %s", exc.message)
                return self._unless_refused(self._token)
            token = answer.get("token") if isinstance(answer, dict) else None
            if not isinstance(token, str) or not token:  # not a pdcat catalog's answer: keep what works
                self._settled = True
                return self._token
            previous, self._token = self._token, token
            expires_at = str(answer.get("expires_at") or "")
            before, self._life = self._life.expires, _life(self._token, expires_at)
            if before is not None and self._life.expires is not None and self._life.expires <= before:
                self._settled = True  # the session ends there: a new token would not last longer
            self._keep(previous, expires_at)
            return self._token

    def _keep(self, previous: str, expires_at: str) -> None:
        if self._store is None:
            return
        try:
            self._store(previous, self._token, expires_at)
        except OSError as exc:  # a full disk or a read-only config folder: this command goes on regardless
            log.warning("could not save the renewed login (%s); the next command may ask you to log in", exc)

    def _due(self) -> bool:
        issued, expires = self._life.issued, self._life.expires
        if expires is None:
            return False
        margin = _MIN_MARGIN
        if issued is not None and expires > issued:
            life = expires - issued
            margin = max(life / 4, min(_MIN_MARGIN, life / 2))
        return self._clock() >= expires - margin

    def _expired(self) -> bool:
        return self._life.expires is not None and self._clock() >= self._life.expires

    def _unless_refused(self, token: str) -> str:
        """``token``, unless a refused refresh left it expired: then that refusal, to log in again."""
        if self._refused is not None and self._expired():
            raise self._refused
        return token


def _life(token: str, expires_at: str | None) -> _Life:
    """When the token was issued and expires: read from its payload (not verified: the catalog decides
    whether it is valid, this only decides when to ask for a new one), else the login's ``expires_at``.

    pyjwt is not used for this: ``pdcat ls`` must start without loading it (tests/unit/test_cli_startup.py).
    """
    import base64
    import json

    try:
        part = token.split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        issued, expires = payload.get("iat"), payload.get("exp")
        if _number(expires):
            return _Life(float(issued) if _number(issued) else None, float(expires))
    except (IndexError, ValueError, AttributeError):
        pass
    try:
        return _Life(None, datetime.fromisoformat(expires_at).timestamp() if expires_at else None)
    except ValueError:
        return _Life(None, None)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stored_login(creds: Credentials, *, clock: Callable[[], float] = time.time) -> RefreshingToken:
    """The token of this machine's stored login (``pdcat login``), saved again after each refresh for
    the next command, unless another login replaced it meanwhile (that one is kept)."""
    server, username = creds.server, creds.username

    def store(previous: str, token: str, expires_at: str) -> None:
        save_credentials(Credentials(server, token, None, username, expires_at), replacing=previous)

    return RefreshingToken(creds.token or "", creds.expires_at, username=username, store=store, clock=clock)

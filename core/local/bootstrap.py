"""Composition root of the embedded catalog: SQLite + local files behind the one router.

First start creates, in the data folder, a JWT secret, a blob-signing key and an ``admin`` user
(SUPER_USER) whose password is printed once and kept in ``initial-admin-password`` (mode 0600).

Password logins and their refreshes are :class:`~core.local.logins.PasswordLogins`; logins
(``POST /auth/token``) back off per user name and per client address (:class:`~core.auth.LoginThrottle`:
429 with ``Retry-After``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.api import build_router
from core.auth import AuthConfig, Authenticator, LoginThrottle, TokenVerifier
from core.config import Settings, check_jwt_secret, check_references_resolved, load_settings
from core.errors import Conflict, TooManyRequests, Unauthenticated
from core.http import Call, Handler, Request, Response, Router
from core.local.file_blobs import FileBlobStore
from core.local.logins import PasswordLogins
from core.local.sqlite_store import (
    SqliteApiKeyStore,
    SqliteDatabase,
    SqliteManifestStore,
    SqliteUserStore,
)
from core.manifest import now_iso
from core.passwords import hash_password, verify_password
from core.rbac import Role
from core.service import CatalogService
from core.users import User, UserAdmin

__all__ = ["FirstStart", "LocalCatalog", "open_local_catalog"]

ADMIN = "admin"


@dataclass(frozen=True)
class FirstStart:
    """What a person needs to log in after the very first start."""

    username: str
    password: str
    password_file: Path


@dataclass
class LocalCatalog:
    data_dir: Path
    router: Router
    service: CatalogService
    blobs: FileBlobStore
    db: SqliteDatabase
    jwt_secret: str
    first_start: FirstStart | None

    def close(self) -> None:
        self.db.close()


def _secret_file(path: Path, make: Any) -> str:
    """Read a secret kept in the data folder, creating it (0600, never group/world readable)."""
    try:
        if os.stat(path).st_mode & 0o777 != 0o600:  # one written by an older pdcat, or by hand
            os.chmod(path, 0o600)
        return path.read_text().strip()
    except FileNotFoundError:
        value: str = make()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value


def open_local_catalog(
    data_dir: Path,
    public_url: str,
    settings: Settings | None = None,
) -> LocalCatalog:
    settings = settings or load_settings()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if (data_dir / "initial-admin-password").exists():  # an older pdcat's, or copied in by hand
        os.chmod(data_dir / "initial-admin-password", 0o600)
    check_references_resolved(os.environ)
    jwt_secret = os.environ.get("PDCAT_JWT_SECRET") or _secret_file(
        data_dir / "jwt-secret", lambda: secrets.token_urlsafe(48)
    )
    check_jwt_secret(jwt_secret, "PDCAT_JWT_SECRET" if os.environ.get("PDCAT_JWT_SECRET") else "jwt-secret")
    signing_key = _secret_file(data_dir / "blob-signing-key", lambda: secrets.token_hex(32))
    db = SqliteDatabase(data_dir / "catalog.sqlite")
    blobs = FileBlobStore(data_dir / "blobs", public_url.rstrip("/"), bytes.fromhex(signing_key))
    api_keys = SqliteApiKeyStore(db)
    users = SqliteUserStore(db)
    first_start = _bootstrap_admin(users, data_dir)

    # Tokens from /auth/token are HS256 with this secret; a JWKS setting adds an external IdP instead.
    # With no setting, only this process issues tokens and checks them, on one clock: no leeway.
    auth_config = settings.auth or AuthConfig(jwt_secret=jwt_secret, leeway_seconds=0)
    authenticator = Authenticator(TokenVerifier(auth_config), api_keys)
    service = CatalogService(SqliteManifestStore(db), blobs, api_keys, settings.service)

    logins = PasswordLogins(
        users,
        jwt_secret,
        ttl_seconds=settings.token_ttl_seconds,
        max_session_seconds=settings.session_max_seconds,
    )

    def authenticate(request: Request) -> Any:
        return authenticator.authenticate(request.headers)

    admin = UserAdmin(users, hash_password, verify_password, now_iso)
    router = build_router(service, authenticate, token_issuer=logins.login, token_refresher=logins.refresh, users=admin)
    _throttle_password_login(router)
    return LocalCatalog(data_dir, router, service, blobs, db, jwt_secret, first_start)


def _throttle_password_login(
    router: Router,
    users: LoginThrottle | None = None,
    addresses: LoginThrottle | None = None,
) -> None:
    """Wrap ``POST /auth/token``: a locked user name or client address gets 429 and ``Retry-After``
    before any password is hashed; a wrong password counts against both; a success forgets the user's
    failures (not the address's: one valid account must not buy an address more guesses)."""
    users = users or LoginThrottle(max_failures=5, what="this user")
    addresses = addresses or LoginThrottle(max_failures=20, what="this address")

    def throttled(handler: Handler) -> Handler:
        def handle(call: Call) -> Response:
            username = call.request.json().get("username")
            if not isinstance(username, str):
                return handler(call)  # the handler answers 400
            client = call.request.client
            try:
                users.check(username)
                if client:
                    addresses.check(client)
            except TooManyRequests as exc:
                response = Response.error(exc.status, exc.code, exc.message)
                response.headers["Retry-After"] = str(exc.retry_after or 1)
                return response
            try:
                response = handler(call)
            except Unauthenticated:
                users.failed(username)
                if client:
                    addresses.failed(client)
                raise
            users.succeeded(username)
            return response

        return handle

    for i, route in enumerate(router.routes):
        if route.method == "POST" and route.pattern == "/auth/token":
            router.routes[i] = replace(route, handler=throttled(route.handler))


def _bootstrap_admin(users: SqliteUserStore, data_dir: Path) -> FirstStart | None:
    if users.count() > 0:
        return None
    password = os.environ.get("PDCAT_ADMIN_PASSWORD") or secrets.token_urlsafe(18)
    user = User(ADMIN, hash_password(password), [Role.SUPER_USER.value], [], now_iso())
    try:
        users.create(user)
    except Conflict:
        return None  # another process bootstrapped at the same moment
    path = data_dir / "initial-admin-password"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return FirstStart(ADMIN, password, path)

"""Configuration, read from the environment in this one place (cosmicpython ``config.py``).

Each frontend's bootstrap calls :func:`load_settings` once; everything else receives values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.auth import AuthConfig
from core.service import ServiceSettings

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    auth: AuthConfig | None
    """None means: the embedded server provides its own HS256 secret from its data folder."""
    log_level: str = "INFO"
    token_ttl_seconds: int = 12 * 3600


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """``PDCAT_JWT_SECRET`` or ``PDCAT_JWKS_URL`` (+ ``PDCAT_JWT_ISSUER``/``AUDIENCE``/field names)."""
    env = os.environ if env is None else env
    service = ServiceSettings(
        url_expiry_seconds=_int(env, "PDCAT_URL_EXPIRY_SECONDS", 900, 1, 7 * 24 * 3600),
    )
    secret = env.get("PDCAT_JWT_SECRET") or None
    jwks = env.get("PDCAT_JWKS_URL") or None
    auth = None
    if secret or jwks:
        auth = AuthConfig(
            jwt_secret=None if jwks else secret,
            jwks_url=jwks,
            issuer=env.get("PDCAT_JWT_ISSUER") or None,
            audience=env.get("PDCAT_JWT_AUDIENCE") or None,
            roles_field=env.get("PDCAT_JWT_ROLES_FIELD") or "roles",
            claims_field=env.get("PDCAT_JWT_CLAIMS_FIELD") or "claims",
            subject_field=env.get("PDCAT_JWT_SUBJECT_FIELD") or "sub",
        )
    return Settings(
        service=service,
        auth=auth,
        log_level=env.get("PDCAT_LOG_LEVEL", "INFO"),
        token_ttl_seconds=_int(env, "PDCAT_TOKEN_TTL_SECONDS", 12 * 3600, 60, 30 * 24 * 3600),
    )

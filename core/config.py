"""Configuration, read from the environment in this one place (cosmicpython ``config.py``).

Each frontend's bootstrap calls :func:`load_settings` once; everything else receives values. Unsafe
secrets stop the start (:class:`SettingsError`): an app setting that is still an unresolved Key Vault
reference (Azure hands the literal ``@Microsoft.KeyVault(...)`` text to the app when it cannot read the
vault), and an HS256 secret shorter than 32 bytes. The error names the setting, never its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.auth import MIN_HS_SECRET_BYTES, AuthConfig
from core.errors import PdcatError
from core.logs import LOG_FORMATS
from core.service import ServiceSettings

__all__ = ["Settings", "SettingsError", "check_jwt_secret", "check_references_resolved", "load_settings"]

# What Azure App Service / Functions leaves in a setting whose reference it could not resolve.
_UNRESOLVED_REFERENCES = ("@microsoft.keyvault(", "@microsoft.appconfiguration(")


class SettingsError(PdcatError, ValueError):
    """A setting that must not be used: one line naming the setting, never its value.

    A ``ValueError`` too, so callers that already treat bad settings as ``ValueError`` keep working;
    a ``PdcatError``, so ``pdcat serve`` prints it as one line instead of a traceback.
    """

    status = 500
    code = "misconfigured"


def check_references_resolved(env: Mapping[str, str]) -> None:
    """Refuse any ``PDCAT_*`` setting that is still a Key Vault (or App Configuration) reference."""
    for name in sorted(env):
        value = env.get(name)
        if name.startswith("PDCAT_") and isinstance(value, str) and _is_reference(value):
            raise SettingsError(
                f"{name} is an unresolved Key Vault reference: the app could not read the secret "
                "(check the vault, the secret's name and the app identity's access to it)"
            )


def _is_reference(value: str) -> bool:
    return value.lstrip().lower().startswith(_UNRESOLVED_REFERENCES)


def check_jwt_secret(secret: str, name: str = "PDCAT_JWT_SECRET") -> None:
    """An HS256 secret must be at least :data:`~core.auth.MIN_HS_SECRET_BYTES` bytes."""
    if _is_reference(secret):
        raise SettingsError(f"{name} is an unresolved Key Vault reference: the app could not read the secret")
    if len(secret.encode("utf-8", "surrogatepass")) < MIN_HS_SECRET_BYTES:
        raise SettingsError(f"{name} is too short: an HS256 secret needs at least {MIN_HS_SECRET_BYTES} bytes")


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    auth: AuthConfig | None
    """None means: the embedded server provides its own HS256 secret from its data folder."""
    log_level: str = "INFO"
    token_ttl_seconds: int = 12 * 3600
    session_max_seconds: int = 7 * 24 * 3600
    """How long a password login of the embedded server lasts, refreshes included: no token outlives it."""
    log_format: str = "auto"
    """``json``, ``text``, or ``auto``: text on a terminal, JSON anywhere else (``core.logs``)."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    raw = (env.get(name) or "").strip() or default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {raw[:40]!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """``PDCAT_JWT_SECRET`` or ``PDCAT_JWKS_URL`` (+ ``PDCAT_JWT_ISSUER``/``AUDIENCE``/field names).

    Raises :class:`SettingsError` (a ``ValueError``) for a setting that is malformed or unsafe.
    """
    env = os.environ if env is None else env
    check_references_resolved(env)
    service = ServiceSettings(
        url_expiry_seconds=_int(env, "PDCAT_URL_EXPIRY_SECONDS", 900, 1, 7 * 24 * 3600),
    )
    secret = env.get("PDCAT_JWT_SECRET") or None
    jwks = env.get("PDCAT_JWKS_URL") or None
    if secret:
        check_jwt_secret(secret)  # also with a JWKS URL: the embedded server signs its own tokens with it
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
        log_level=_choice(env, "PDCAT_LOG_LEVEL", "INFO", _LOG_LEVELS, upper=True),
        # a few seconds are for tests: a push that outlives its first token
        token_ttl_seconds=_int(env, "PDCAT_TOKEN_TTL_SECONDS", 12 * 3600, 2, 30 * 24 * 3600),
        session_max_seconds=_int(env, "PDCAT_SESSION_MAX_SECONDS", 7 * 24 * 3600, 2, 365 * 24 * 3600),
        log_format=_choice(env, "PDCAT_LOG_FORMAT", "auto", LOG_FORMATS),
    )

"""API keys: create, list, revoke (claim ``MANAGE_API_KEYS``), and who a key acts as.

A key is stored hashed (``core.auth``), expires, can be revoked, and never carries more than its
creator holds (a SUPER_USER may grant anything). A key acts as its creator, or as one of the
creator's service accounts, ``svc:<creator>/<name>``: no token may claim a ``svc:`` subject
(``core.auth``) and the creator is part of the name, so no one else can ever act as it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import Forbidden, InvalidInput, NotFound
from core.manifest import now_iso, parse_description, parse_roles, whole_number
from core.ports import ApiKeyRecord, ApiKeyStore
from core.rbac import SERVICE_ACCOUNT_PREFIX, Claim, Principal, require
from core.wire import SERVICE_ACCOUNT_PATTERN

__all__ = ["SERVICE_ACCOUNT", "api_key_subject", "create_api_key", "list_api_keys", "revoke_api_key"]

log = logging.getLogger("pdcat.service")

SERVICE_ACCOUNT = re.compile(SERVICE_ACCOUNT_PATTERN)
"""A service account's name: the rule the OpenAPI document states (core.wire)."""

_FIELDS = {"roles", "claims", "service_account", "expires_in_days", "description"}


def api_key_subject(who: Principal, body: dict[str, Any]) -> str:
    """Who a new key acts as: its creator, or a service account of the creator's, named
    ``svc:<creator>/<name>``. Token subjects may not start with ``svc:`` (core.auth), and the
    creator is part of the name, so no user and no other creator can ever claim it."""
    if "subject" in body:
        raise InvalidInput(
            "an API key acts as its creator; for a robot, give service_account NAME instead of subject "
            f"(it acts as {SERVICE_ACCOUNT_PREFIX}<you>/NAME)"
        )
    name = body.get("service_account")
    if name is None:
        return who.subject
    if not isinstance(name, str) or not SERVICE_ACCOUNT.fullmatch(name):
        raise InvalidInput(
            "service_account must be 1-64 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return f"{SERVICE_ACCOUNT_PREFIX}{who.subject}/{name}"


def create_api_key(
    keys: ApiKeyStore, who: Principal, body: dict[str, Any], *, max_days: int
) -> tuple[ApiKeyRecord, str]:
    """A key never carries more than its creator holds (a SUPER_USER may grant anything)."""
    from core.auth import hash_secret, new_api_key  # loads jwt: only creating a key needs it

    require(who, Claim.MANAGE_API_KEYS)
    roles = parse_roles(body.get("roles", []))
    claims = parse_roles(body.get("claims", []))
    if not who.is_super_user:
        extra_roles = set(roles) - who.effective_roles
        extra_claims = set(claims) - who.effective_claims
        if extra_roles or extra_claims:
            raise Forbidden(
                f"an API key cannot carry more than its creator: {', '.join(sorted(extra_roles | extra_claims))}"
            )
    subject = api_key_subject(who, body)
    unknown = set(body) - _FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    days = whole_number(body.get("expires_in_days", 90))
    if days is None or not 1 <= days <= max_days:
        raise InvalidInput(f"expires_in_days must be an integer from 1 to {max_days}")
    description = parse_description(body.get("description", ""))
    key_id, secret, full_key = new_api_key()
    expires = (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = ApiKeyRecord(
        key_id=key_id,
        secret_hash=hash_secret(secret),
        subject=subject,
        roles=roles,
        claims=claims,
        created_by=who.subject,
        created_at=now_iso(),
        expires_at=expires,
        description=description,
    )
    keys.create(record)
    log.info("api key created", extra={"key_id": key_id, "by": who.subject})
    return record, full_key


def list_api_keys(keys: ApiKeyStore, who: Principal) -> list[ApiKeyRecord]:
    require(who, Claim.MANAGE_API_KEYS)
    return sorted(keys.list(), key=lambda r: r.created_at)


def revoke_api_key(keys: ApiKeyStore, who: Principal, key_id: str) -> ApiKeyRecord:
    """Revoking twice answers the first revocation: who and when stay those of the first."""
    require(who, Claim.MANAGE_API_KEYS)
    record = keys.get(key_id)
    if record is None:
        raise NotFound("no such API key")
    if record.revoked:
        return record
    revoked = replace(record, revoked=True, revoked_at=now_iso(), revoked_by=who.subject)
    keys.put(revoked)
    return revoked

"""Role-based access control: pure decisions, no I/O.

Claims are permissions; roles bundle claims. Built-in roles nest (ADMIN ⊇ PUBLISHER ⊇ USER), so a
manifest that requires ``USER`` is visible to an ``ADMIN``. ``SUPER_USER`` bypasses every check.

Visibility of a manifest: its ``required_roles`` (any of) AND its ``required_claims`` (any of). A
caller who cannot see a manifest must get exactly what they would get if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from core.errors import Forbidden

__all__ = [
    "ALL_CLAIMS",
    "ANONYMOUS",
    "ROLE_CLAIMS",
    "SERVICE_ACCOUNT_PREFIX",
    "Claim",
    "Principal",
    "Role",
    "can_see",
    "require",
]


class Claim(StrEnum):
    LIST = "LIST_CATALOG_MANIFEST"
    PULL = "PULL_CATALOG_MANIFEST"
    PUSH = "PUSH_CATALOG_MANIFEST"
    UPDATE = "UPDATE_CATALOG_MANIFEST"
    DELETE = "DELETE_CATALOG_MANIFEST"
    TAINT = "TAINT_CATALOG_MANIFEST"
    REVOKE = "REVOKE_CATALOG_MANIFEST"
    IMPORT = "IMPORT_CATALOG_MANIFEST"
    MANAGE_API_KEYS = "MANAGE_API_KEYS"


class Role(StrEnum):
    USER = "USER"
    PUBLISHER = "PUBLISHER"
    ADMIN = "ADMIN"
    SUPER_USER = "SUPER_USER"


SERVICE_ACCOUNT_PREFIX = "svc:"
"""Subjects of API keys minted for a service account (``svc:<creator>/<name>``); no token may claim one."""

ALL_CLAIMS: frozenset[str] = frozenset(c.value for c in Claim)
_USER = frozenset({Claim.LIST.value, Claim.PULL.value})
_PUBLISHER = _USER | {Claim.PUSH.value, Claim.UPDATE.value, Claim.IMPORT.value}
ROLE_CLAIMS: dict[str, frozenset[str]] = {
    Role.USER.value: _USER,
    Role.PUBLISHER.value: frozenset(_PUBLISHER),
    Role.ADMIN.value: ALL_CLAIMS,
    Role.SUPER_USER.value: ALL_CLAIMS,
}
_ROLE_IMPLIES: dict[str, frozenset[str]] = {
    Role.USER.value: frozenset({Role.USER.value}),
    Role.PUBLISHER.value: frozenset({Role.PUBLISHER.value, Role.USER.value}),
    Role.ADMIN.value: frozenset({Role.ADMIN.value, Role.PUBLISHER.value, Role.USER.value}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling, after authentication. ``via`` is ``token`` or ``api_key``."""

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    claims: frozenset[str] = field(default_factory=frozenset)
    via: str = "token"

    @classmethod
    def of(cls, subject: str, roles: Iterable[str] = (), claims: Iterable[str] = (), via: str = "token") -> Principal:
        # Only ASCII names: Unicode case mapping folds some letters into ASCII ones ("adm" + U+0131 +
        # "n", with a dotless i, upper-cases to "ADMIN"), so a non-ASCII role from an identity
        # provider is dropped, never folded.
        return cls(
            subject,
            frozenset(r.upper() for r in roles if r.isascii()),
            frozenset(c.upper() for c in claims if c.isascii()),
            via,
        )

    @property
    def is_super_user(self) -> bool:
        return Role.SUPER_USER.value in self.roles

    @property
    def effective_roles(self) -> frozenset[str]:
        out: set[str] = set()
        for role in self.roles:
            out |= _ROLE_IMPLIES.get(role, frozenset({role}))
        return frozenset(out)

    @property
    def effective_claims(self) -> frozenset[str]:
        out = set(self.claims)
        for role in self.roles:
            out |= ROLE_CLAIMS.get(role, frozenset())
        return frozenset(out)

    def has(self, claim: Claim) -> bool:
        return self.is_super_user or claim.value in self.effective_claims


ANONYMOUS = Principal("anonymous")


def require(principal: Principal, claim: Claim) -> None:
    """Raise 403 unless the principal holds the claim (directly or through a role)."""
    if not principal.has(claim):
        raise Forbidden(f"this needs the {claim.value} claim, which {principal.subject!r} does not have")


def can_see(principal: Principal, required_roles: Iterable[str], required_claims: Iterable[str]) -> bool:
    if principal.is_super_user:
        return True
    roles = frozenset(required_roles)
    claims = frozenset(required_claims)
    if roles and not roles & principal.effective_roles:
        return False
    return not (claims and not claims & principal.effective_claims)

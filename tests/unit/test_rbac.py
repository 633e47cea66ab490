"""RBAC decisions are pure functions: a table of who may see and do what."""

from __future__ import annotations

import pytest

from core.errors import Forbidden
from core.rbac import ALL_CLAIMS, Claim, Principal, can_see, require

USER = Principal.of("u", ["USER"])
PUBLISHER = Principal.of("p", ["PUBLISHER"])
ADMIN = Principal.of("a", ["ADMIN"])
ROOT = Principal.of("r", ["SUPER_USER"])
DEV = Principal.of("d", ["DEVELOPERS"], ["BETA_ACCESS"])
NOBODY = Principal.of("n")


@pytest.mark.parametrize(
    ("who", "claim", "allowed"),
    [
        (USER, Claim.LIST, True),
        (USER, Claim.PULL, True),
        (USER, Claim.PUSH, False),
        (PUBLISHER, Claim.PUSH, True),
        (PUBLISHER, Claim.UPDATE, True),
        (PUBLISHER, Claim.IMPORT, True),
        (PUBLISHER, Claim.DELETE, False),
        (PUBLISHER, Claim.TAINT, False),
        (ADMIN, Claim.REVOKE, True),
        (ADMIN, Claim.MANAGE_API_KEYS, True),
        (ROOT, Claim.DELETE, True),
        (NOBODY, Claim.LIST, False),
        (Principal.of("c", claims=["pull_catalog_manifest"]), Claim.PULL, True),
    ],
)
def test_claims_come_from_roles_or_directly(who: Principal, claim: Claim, allowed: bool) -> None:
    assert who.has(claim) is allowed
    if allowed:
        require(who, claim)
    else:
        with pytest.raises(Forbidden, match=claim.value):
            require(who, claim)


def test_admin_holds_every_claim() -> None:
    assert ADMIN.effective_claims == ALL_CLAIMS


@pytest.mark.parametrize(
    ("who", "roles", "claims", "visible"),
    [
        (USER, [], [], True),
        (USER, ["DEVELOPERS"], [], False),
        (DEV, ["DEVELOPERS"], [], True),
        (DEV, ["DESIGNERS", "DEVELOPERS"], [], True),  # any of the roles
        (DEV, ["DEVELOPERS"], ["BETA_ACCESS"], True),  # roles AND claims
        (DEV, ["DEVELOPERS"], ["GA_ONLY"], False),
        (DEV, [], ["GA_ONLY", "BETA_ACCESS"], True),  # any of the claims
        (ADMIN, ["USER"], [], True),  # built-in roles nest
        (ADMIN, ["PUBLISHER"], [], True),
        (USER, ["PUBLISHER"], [], False),
        (ADMIN, ["DEVELOPERS"], [], False),  # custom roles do not
        (ROOT, ["DEVELOPERS"], ["GA_ONLY"], True),  # SUPER_USER bypasses
        (PUBLISHER, [], ["PUSH_CATALOG_MANIFEST"], True),  # a role's claims count
        (USER, [], ["PUSH_CATALOG_MANIFEST"], False),
    ],
)
def test_visibility(who: Principal, roles: list[str], claims: list[str], visible: bool) -> None:
    assert can_see(who, roles, claims) is visible


def test_non_ascii_role_names_from_a_token_are_dropped_not_folded() -> None:
    from core.rbac import Principal

    # "adm\u0131n" (dotless i) upper-cases to "ADMIN": folding it would grant the role
    who = Principal.of("eve", roles=["adm\u0131n", "user"], claims=["\u212aeep"])
    assert who.roles == frozenset({"USER"})
    assert who.claims == frozenset()

"""Manifest state rules: taint, untaint, revoke (permanent), pullability."""

from __future__ import annotations

import pytest

from core.errors import Conflict, Gone, InvalidInput, Tainted
from core.manifest import Manifest, MinimumRequirements


def ready() -> Manifest:
    return Manifest(catalog_id="vm", version="1", architecture="arm64", status="ready")


def test_taint_untaint_record_who_and_when() -> None:
    m = ready().taint("alice")
    assert m.tainted and m.tainted_by == "alice" and m.tainted_at
    assert not m.usable
    with pytest.raises(Conflict, match="already tainted"):
        m.taint("bob")
    m = m.untaint("bob")
    assert not m.tainted and m.untainted_by == "bob" and m.usable
    with pytest.raises(Conflict, match="not tainted"):
        m.untaint("bob")


def test_revoke_is_permanent() -> None:
    m = ready().revoke("carol")
    assert m.revoked and m.revoked_by == "carol"
    for change in (m.taint, m.untaint, m.revoke):
        with pytest.raises(Gone):
            change("dave")
    with pytest.raises(Gone):
        m.ensure_pullable()


def test_pullability() -> None:
    ready().ensure_pullable()
    with pytest.raises(Tainted):
        ready().taint("x").ensure_pullable()
    with pytest.raises(Conflict, match="uploaded"):
        Manifest(catalog_id="vm", version="1", architecture="arm64").ensure_pullable()


def test_record_round_trip_and_public_shape() -> None:
    m = ready().touched(tags=["a"], minimum_requirements=MinimumRequirements(2, 4096, 65536))
    assert Manifest.from_record(m.to_record()) == m
    public = m.to_public()
    assert public["storage"] == {"name": "", "prefix": ""}
    assert public["minimum_requirements"] == {"cpu": 2, "memory_mb": 4096, "disk_mb": 65536}
    assert "upload" not in public and public["upload_in_progress"] is False


@pytest.mark.parametrize("bad", [{"cpu": -1}, {"cpu": "2"}, {"memory_mb": True}, {"gpu": 1}, [1, 2]])
def test_minimum_requirements_validation(bad: object) -> None:
    with pytest.raises(InvalidInput):
        MinimumRequirements.parse(bad)

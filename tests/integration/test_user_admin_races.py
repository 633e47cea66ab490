"""Two changes to one user at once (``core.users.UserAdmin`` over the embedded server's SQLite store):
neither may silently undo the other.

A change reads the user, works (a password change spends two hash checks), then writes the whole
record back. A user who changes their own password over and over always has one change in flight, so
without a check the role change a SUPER_USER makes meanwhile (a demotion) is written over with the
roles read before it, and a password reset is written over with the hash read before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.errors import Conflict
from core.local.sqlite_store import SqliteDatabase, SqliteUserStore
from core.manifest import now_iso
from core.passwords import hash_password, verify_password
from core.rbac import Principal
from core.users import User, UserAdmin

ROOT = Principal.of("root", ["SUPER_USER"])
MALLORY = Principal.of("mallory", ["PUBLISHER"])
OLD, NEW, RESET = "old-password-1", "new-password-2", "reset-password-3"


class _ChangedAfterRead(SqliteUserStore):
    """The real store, plus: once, right after a read of the user, another change lands."""

    meanwhile: Callable[[], None] | None = None

    def get(self, username: str) -> User | None:
        user = super().get(username)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return user


@pytest.fixture
def store(tmp_path: Path) -> Iterator[_ChangedAfterRead]:
    db = SqliteDatabase(tmp_path / "catalog.sqlite")
    users = _ChangedAfterRead(db)
    users.create(User("mallory", hash_password(OLD), ["PUBLISHER"], [], now_iso()))
    try:
        yield users
    finally:
        users.close()


def _user(store: SqliteUserStore) -> User:
    user = store.get("mallory")
    assert user is not None
    return user


def test_an_own_password_change_does_not_undo_a_demotion_made_meanwhile(store: _ChangedAfterRead) -> None:
    admin = UserAdmin(store, hash_password, verify_password, now_iso)
    store.meanwhile = lambda: admin.set_roles(ROOT, "mallory", {"roles": ["USER"]})
    with pytest.raises(Conflict, match="try again"):
        admin.set_password(MALLORY, "mallory", {"password": NEW, "current_password": OLD})
    assert _user(store).roles == ["USER"]
    assert verify_password(OLD, _user(store).password_hash)  # and the change was not made: say so, retry


def test_a_role_change_does_not_undo_a_password_reset_made_meanwhile(store: _ChangedAfterRead) -> None:
    admin = UserAdmin(store, hash_password, verify_password, now_iso)
    store.meanwhile = lambda: admin.set_password(ROOT, "mallory", {"password": RESET})
    with pytest.raises(Conflict, match="try again"):
        admin.set_roles(ROOT, "mallory", {"roles": ["USER"]})
    assert verify_password(RESET, _user(store).password_hash)  # the old password stays refused
    assert _user(store).roles == ["PUBLISHER"]


def test_one_change_at_a_time_goes_through(store: _ChangedAfterRead) -> None:
    admin = UserAdmin(store, hash_password, verify_password, now_iso)
    admin.set_password(MALLORY, "mallory", {"password": NEW, "current_password": OLD})
    admin.set_roles(ROOT, "mallory", {"roles": ["USER"]})
    assert verify_password(NEW, _user(store).password_hash) and _user(store).roles == ["USER"]

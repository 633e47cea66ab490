"""``begin_immediate`` asks again when ``BEGIN IMMEDIATE`` is refused with "database is locked" (seen
once in CI under load, cause unknown: core/local/sqlite_store.py). The refusal cannot be forced from
outside SQLite, so a connection that refuses a given number of times stands in for it; the waiting
SQLite does itself is covered by the racing tests of tests/contract/test_ports.py."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from core.local.sqlite_store import begin_immediate


class _Refusing:
    """Answers ``BEGIN IMMEDIATE`` with ``error`` ``times`` times, then begins a real transaction."""

    def __init__(self, times: int, error: str = "database is locked") -> None:
        self.real = sqlite3.connect(":memory:", isolation_level=None)
        self.times, self.error, self.tries = times, error, 0

    def execute(self, sql: str, *args: Any) -> Any:
        self.tries += 1
        if self.tries <= self.times:
            raise sqlite3.OperationalError(self.error)
        return self.real.execute(sql, *args)


def test_a_lock_refused_at_once_is_asked_for_again() -> None:
    conn = _Refusing(3)
    begin_immediate(conn, timeout=5)  # type: ignore[arg-type]
    assert conn.tries == 4 and conn.real.in_transaction


def test_it_gives_up_after_the_timeout_with_sqlites_own_error() -> None:
    conn = _Refusing(10**9)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        begin_immediate(conn, timeout=0.05)  # type: ignore[arg-type]
    assert conn.tries > 1


def test_other_failures_are_not_retried() -> None:
    conn = _Refusing(1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        begin_immediate(conn, timeout=5)  # type: ignore[arg-type]
    assert conn.tries == 1

"""Password login (``POST /auth/token``, the embedded server's own users) backs off.

Per user name: after 5 failures in a row the name is locked (429, ``Retry-After``) for a time that
doubles with every further failure, up to a cap; a success forgets the name's failures. Per client
address: after 20 failures, whatever the names, the address is locked the same way. A locked name or
address is refused before any password is hashed. An unknown name costs the same hashing work as a
known one, so neither the answer nor its timing says which names exist.

Password login exists on the embedded server only (the cloud frontends have no built-in users). Each
test starts its own server: a lockout would otherwise spill over into every other test that logs in
from the same loopback address.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.api import CatalogClient
from core.errors import TooManyRequests
from infra.local.servers import RunningServer, start_embedded
from tests.backend_names import BACKENDS
from tests.contract.helpers import assert_error

pytestmark = pytest.mark.skipif("embedded" not in BACKENDS, reason="password login is the embedded server's only")

SECRET = "login-throttle-" + secrets.token_hex(24)
PASSWORD = "admin-" + secrets.token_hex(8)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_embedded(
        tmp_path / "catalog",
        env={"PDCAT_JWT_SECRET": SECRET, "PDCAT_ADMIN_PASSWORD": PASSWORD, "PDCAT_LOG_LEVEL": "WARNING"},
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def login(server: RunningServer) -> Iterator[Callable[[str, str], httpx.Response]]:
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http:

        def post(username: str, password: str) -> httpx.Response:
            return http.post("/auth/token", json={"username": username, "password": password})

        yield post


def _throttled(r: httpx.Response, retry_after: int) -> dict[str, Any]:
    error = assert_error(r, 429, "too_many_requests")
    assert r.headers["Retry-After"] == str(retry_after), (r.headers.get("Retry-After"), error)
    assert PASSWORD not in r.text
    return error


def test_a_user_name_is_locked_after_5_failures_for_a_doubling_time(
    server: RunningServer, login: Callable[[str, str], httpx.Response]
) -> None:
    # a success forgets the failures: 4 + 4 wrong passwords with a success between never lock
    for _ in range(2):
        for _ in range(4):
            assert_error(login("admin", "wrong"), 401, "unauthenticated")
        assert login("admin", PASSWORD).status_code == 200
    # the 5th failure in a row locks the name for 1 s: even the right password is refused, unhashed
    for _ in range(5):
        assert_error(login("admin", "wrong"), 401, "unauthenticated")
    error = _throttled(login("admin", PASSWORD), 1)
    assert "this user" in error["message"]
    with CatalogClient(server.url) as client, pytest.raises(TooManyRequests):
        client.login("admin", PASSWORD)
    assert_error(login("nobody", "wrong"), 401, "unauthenticated")  # other names are not locked
    # once the lockout is over, one more failure locks it again, twice as long
    time.sleep(1.1)
    assert_error(login("admin", "wrong"), 401, "unauthenticated")
    _throttled(login("admin", "wrong"), 2)
    time.sleep(2.1)
    assert login("admin", PASSWORD).status_code == 200
    assert_error(login("admin", "wrong"), 401, "unauthenticated")  # counting starts again from zero


def test_unknown_user_names_are_locked_like_known_ones(login: Callable[[str, str], httpx.Response]) -> None:
    for _ in range(5):
        assert_error(login("nobody", "guess"), 401, "unauthenticated")
    _throttled(login("nobody", "guess"), 1)


def test_an_address_is_locked_after_20_failures_whatever_the_names(
    login: Callable[[str, str], httpx.Response],
) -> None:
    for i in range(20):
        assert_error(login(f"user-{i}", "guess"), 401, "unauthenticated")  # never 5 for one name
    error = _throttled(login("admin", PASSWORD), 1)
    assert "this address" in error["message"]


def test_bad_input_is_not_a_failed_login(login: Callable[[str, str], httpx.Response], server: RunningServer) -> None:
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http:
        for _ in range(25):
            assert_error(http.post("/auth/token", json={"username": "admin"}), 400, "invalid_input")
    assert login("admin", PASSWORD).status_code == 200


def test_429_is_in_the_contract(server: RunningServer) -> None:
    doc = httpx.get(server.url + "/api/v1/openapi.json", timeout=60).json()
    assert "429" in doc["paths"]["/api/v1/auth/token"]["post"]["responses"]


def test_an_unknown_user_costs_the_same_hashing_work_as_a_known_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted in-process (deterministic): one argon2id check, with the same cost parameters."""
    import argon2._password_hasher as hasher_module
    from argon2 import extract_parameters

    from core.config import load_settings
    from core.local.bootstrap import open_local_catalog
    from core.local.server import WsgiApp

    monkeypatch.setenv("PDCAT_JWT_SECRET", SECRET)
    monkeypatch.setenv("PDCAT_ADMIN_PASSWORD", PASSWORD)
    catalog = open_local_catalog(tmp_path / "catalog", "http://catalog.test", load_settings({}))
    calls: list[tuple[int, int, int, int]] = []
    real = hasher_module.verify_secret  # type: ignore[attr-defined]  # what PasswordHasher.verify calls

    def counting(hash: bytes, secret: bytes, type: Any) -> bool:
        cost = extract_parameters(hash.decode("ascii"))
        calls.append((cost.memory_cost, cost.time_cost, cost.parallelism, cost.hash_len))
        return real(hash, secret, type)

    monkeypatch.setattr(hasher_module, "verify_secret", counting)
    transport = httpx.WSGITransport(app=WsgiApp(catalog))
    try:
        with httpx.Client(transport=transport, base_url="http://catalog.test/api/v1") as http:
            work = {}
            for username in ("admin", "nobody"):
                calls.clear()
                r = http.post("/auth/token", json={"username": username, "password": "wrong"})
                assert_error(r, 401, "unauthenticated")
                assert r.json()["error"]["message"] == "invalid username or password"
                work[username] = list(calls)
    finally:
        catalog.close()
    assert work["admin"] == [(19 * 1024, 2, 1, 32)]
    assert work["nobody"] == work["admin"]


def test_an_unknown_user_takes_as_long_as_a_known_one(login: Callable[[str, str], httpx.Response]) -> None:
    """Over the wire, loosely (a shared machine is noisy): without the dummy hash an unknown name
    answered in well under a tenth of the time a known name's password check takes."""

    def timed(username: str) -> float:
        started = time.perf_counter()
        assert_error(login(username, "wrong"), 401, "unauthenticated")
        return time.perf_counter() - started

    known, unknown = [], []
    for i in range(4):  # 4 failures for admin: under the lockout threshold
        known.append(timed("admin"))
        unknown.append(timed(f"ghost-{i}"))
    assert statistics.median(unknown) > 0.4 * statistics.median(known), (known, unknown)

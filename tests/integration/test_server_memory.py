"""The embedded server stays lean (issue 14: at most 64 MiB resident during a transfer): with a shared
secret it verifies HS256 only and never maps the ``cryptography`` bindings PyJWT would load; in JWKS
mode it needs them and has them."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from infra.local.servers import start_embedded


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
@pytest.mark.parametrize("mode", ["secret", "jwks"])
def test_the_server_loads_the_crypto_bindings_only_for_jwks(tmp_path: Path, mode: str) -> None:
    env = {"PDCAT_JWT_SECRET": secrets.token_hex(32)}
    if mode == "jwks":
        env["PDCAT_JWKS_URL"] = "http://127.0.0.1:9/jwks.json"  # fetched on first use only
    server = start_embedded(tmp_path / "data", env=env)
    try:
        loaded = "/cryptography/" in _maps(server.process.pid)  # it serves: start_embedded waited for that
    finally:
        server.stop()
    assert loaded == (mode == "jwks")

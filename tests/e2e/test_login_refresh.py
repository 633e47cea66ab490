"""A password login outlives its tokens (issue 15, item 8): ``pdcat`` refreshes the stored login's token
before it runs out, so a push longer than a token's life still commits and the next command needs no
new login; once a token has expired, the command says to log in again.

A private ``pdcat serve`` whose tokens last 6 s and that checks them with no clock leeway (its own
secret), so a token past its ``exp`` really is refused; ``PDCAT_DEBUG_CHUNK_DELAY`` makes the push last
longer than that.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from infra.local.servers import RunningServer, start_embedded
from tests.e2e.conftest import Pdcat
from tests.e2e.fault_helpers import random_bundle
from tests.fakes.file_keyring import read_secrets

TTL = 6
CHUNK = 65536
CHUNKS = 12
DELAY = 0.8  # per chunk, one at a time: the push lasts about 10 s, well past the first token
PASSWORD = "admin-" + secrets.token_hex(8)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    env = {"PDCAT_TOKEN_TTL_SECONDS": str(TTL), "PDCAT_ADMIN_PASSWORD": PASSWORD, "PDCAT_LOG_LEVEL": "WARNING"}
    # its own secret, so no clock leeway: an in-process backend's fixture may have left PDCAT_JWT_SECRET
    # in this worker's environment, and with it the 30 s leeway would keep an expired token alive
    env |= {"PDCAT_JWT_SECRET": "", "PDCAT_JWKS_URL": ""}
    running = start_embedded(tmp_path / "catalog", env=env)
    yield running
    running.stop()


def _stored(pdcat: Pdcat) -> dict[str, str]:
    """The current server's stored login (``credentials.json`` keeps one per server), with its token
    from the test keychain when it is kept there."""
    logins = json.loads((Path(pdcat.env["PDCAT_CONFIG_DIR"]) / "credentials.json").read_text())
    stored: dict[str, str] = dict(logins["servers"][logins["current"]])
    if stored.get("stored_in") == "keychain":
        place = logins["servers"][logins["current"]]["keychain"]
        keychain = read_secrets(Path(pdcat.env["KEYRING_PROPERTY_PATH"]))
        stored["token"] = keychain[place["service"]][place["account"]]
    return stored


def _expiry(stored: dict[str, str]) -> float:
    return datetime.fromisoformat(stored["expires_at"]).timestamp()


def _refused(server: RunningServer, token: str) -> bool:
    r = httpx.get(server.url + "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return r.status_code == 401


def test_a_push_longer_than_a_token_commits_and_the_login_lives_on(
    server: RunningServer, pdcat_bare: Pdcat, tmp_path: Path
) -> None:
    pdcat = pdcat_bare
    done = pdcat.run("login", "--server", server.url, "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.code == 0, done.err
    first = _stored(pdcat)
    cid = f"refresh-{secrets.token_hex(4)}"

    bundle = random_bundle(tmp_path / "src", "long", CHUNKS * CHUNK, seed=8)
    args = ["push", str(bundle), "--catalog", cid, "--version", "1.0", "--arch", "x86_64"]
    args += ["--chunk-size", str(CHUNK), "--workers", "1", "--json"]
    pushed = pdcat.run(*args, env={"PDCAT_DEBUG_CHUNK_DELAY": str(DELAY)})
    finished = time.time()
    assert pushed.code == 0, pushed.err
    assert json.loads(pushed.out)["manifest"]["status"] == "ready"
    assert finished > _expiry(first) + 1, "the push must outlive the first token"
    assert _refused(server, first["token"])  # the first token is dead: the commit was sent with a new one

    # the next command goes on with the login the push saved: no new password
    renewed = _stored(pdcat)
    assert renewed["token"] != first["token"] and renewed["username"] == "admin"
    listed = pdcat.run("ls", "-q")
    assert listed.code == 0, listed.err
    assert f"{cid}:1.0" in listed.out
    assert "Traceback" not in listed.err

    # a stored token past its end can no longer be renewed: the command says what to do
    last = _stored(pdcat)
    time.sleep(max(0.0, _expiry(last) + 1 - time.time()))
    line = pdcat.fail("ls")
    assert "token expired" in line
    assert line.endswith(f"log in again: pdcat login --server {server.url} -u admin")

    # a PDFile's own login (AUTHENTICATE USERNAME/PASSWORD) is renewed in memory, never stored
    recipe = tmp_path / "ls.pdfile"
    recipe.write_text(
        f"RUN list\nFROM {server.url}\nAUTHENTICATE USERNAME admin\nAUTHENTICATE PASSWORD {{{{ .Env.ADMIN_PW }}}}\n"
    )
    listed = pdcat.run("run", str(recipe), "--json", env={"ADMIN_PW": PASSWORD})
    assert listed.code == 0, listed.err
    assert any(item["catalog_id"] == cid for item in json.loads(listed.out)["items"])
    assert _stored(pdcat) == last

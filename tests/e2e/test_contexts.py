"""Logins as people keep them (issue 15, item 9): secrets in the keychain with the file as a fallback,
and several servers logged in at once, one of them current (``pdcat context``).

The keychain is ``tests/fakes/file_keyring.py``, a real keyring backend over a JSON file in the test's
folder (the conftest names it in ``PYTHON_KEYRING_BACKEND``); keyring's own fail backend stands for a
machine without one. The servers are the session's embedded catalog and, for the tests that need two,
a second ``pdcat serve`` started here.
"""

from __future__ import annotations

import json
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.servers import RunningServer, start_embedded
from tests.e2e.conftest import Pdcat, admin_password, make_bundle, needs_embedded
from tests.fakes.file_keyring import read_secrets

NO_KEYCHAIN = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


def stored(tmp_path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((tmp_path / "config" / "credentials.json").read_text())
    return found


def keychain(tmp_path: Path) -> dict[str, str]:
    """What the test's keychain holds for this test's config folder: {server: secret}."""
    return read_secrets(tmp_path / "keychain.json").get(f"pdcat {tmp_path / 'config'}", {})


@pytest.fixture
def password(backend: Any, request: pytest.FixtureRequest) -> str:
    needs_embedded(backend, "the built-in admin user and its bootstrap password")
    return admin_password(request.config)


@pytest.fixture
def second(tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    """Another embedded catalog, with its own users, secret and data: (server, admin password)."""
    word = "second-" + secrets.token_hex(8)
    env = {"PDCAT_JWT_SECRET": secrets.token_hex(32), "PDCAT_ADMIN_PASSWORD": word, "PDCAT_LOG_LEVEL": "WARNING"}
    server = start_embedded(tmp_path / "second", env=env)
    try:
        yield server, word
    finally:
        server.stop()


# ---- the keychain ---------------------------------------------------------------------------------------
def test_the_secret_lives_in_the_keychain_and_only_there(
    backend: Any, pdcat_bare: Pdcat, password: str, tmp_path: Path
) -> None:
    out = pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password).out
    assert "the token is in the keychain (file_keyring)" in out and "no usable keychain" not in out
    token = keychain(tmp_path)[backend.url]
    text = (tmp_path / "config" / "credentials.json").read_text()
    assert token not in text and password not in text
    entry = stored(tmp_path)["servers"][backend.url]
    assert (entry["username"], entry["auth"], entry["stored_in"]) == ("admin", "token", "keychain")
    assert pdcat_bare.json("whoami")["subject"] == "admin"  # the next command reads it back

    # an API key replaces the token, in the same place; listing the logins never shows either
    key = pdcat_bare.json("apikey", "create", "--role", "USER")["key"]
    done = pdcat_bare.run("login", "--server", backend.url, "--api-key", "-", stdin=key + "\n")
    assert done.code == 0 and "the key is in the keychain" in done.out, done.err
    assert keychain(tmp_path) == {backend.url: key}
    assert key not in (tmp_path / "config" / "credentials.json").read_text()
    assert pdcat_bare.json("whoami")["via"] == "api_key"
    listed = pdcat_bare.ok("context", "ls", "--json").out + pdcat_bare.ok("context", "ls").out
    assert key not in listed and token not in listed

    assert f"Logged out of {backend.url}" in pdcat_bare.ok("logout").out
    assert keychain(tmp_path) == {}
    assert not (tmp_path / "config" / "credentials.json").exists()


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (NO_KEYCHAIN, "no usable keychain (no keychain on this machine), so the token is in"),
        ({"KEYRING_PROPERTY_FAIL": "set"}, "no usable keychain (the keychain is locked), so the token is in"),
        ({"KEYRING_PROPERTY_FAIL": "get"}, "no usable keychain (the keychain is locked), so the token is in"),
        ({"PDCAT_KEYRING": "0"}, "readable only by you (PDCAT_KEYRING=0)"),
    ],
    ids=["no-keychain", "locked", "unreadable", "PDCAT_KEYRING=0"],
)
def test_without_a_usable_keychain_the_file_keeps_the_secret(
    backend: Any, pdcat_bare: Pdcat, password: str, tmp_path: Path, env: dict[str, str], said: str
) -> None:
    done = pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password, env=dict(env))
    assert said in done.out and "readable only by you" in done.out
    assert len(done.out.splitlines()) == 1 and done.err == ""  # said once, in the login message
    path = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = stored(tmp_path)["servers"][backend.url]
    assert entry["stored_in"] == "file" and entry["token"] and password not in path.read_text()
    assert keychain(tmp_path) == {}
    assert pdcat_bare.json("whoami", env=dict(env))["subject"] == "admin"
    assert pdcat_bare.json("whoami")["subject"] == "admin"  # a keychain that works now is not asked
    assert "Logged out" in pdcat_bare.ok("logout", env=dict(env)).out
    assert not path.exists()


def test_a_secret_the_keychain_lost_or_hides_asks_to_log_in_again(
    backend: Any, pdcat_bare: Pdcat, password: str, tmp_path: Path
) -> None:
    pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password)
    line = pdcat_bare.fail("ls", env={"KEYRING_PROPERTY_FAIL": "get"})
    assert line == (
        f"pdcat: cannot read your login to {backend.url} from the keychain (the keychain is locked): unlock it, "
        f"or log in again: pdcat login --server {backend.url} -u admin"
    )
    (tmp_path / "keychain.json").write_text("{}")  # taken out of the keychain by its owner, or another tool
    line = pdcat_bare.fail("ls")
    assert line == (
        f"pdcat: your login to {backend.url} is no longer in the keychain: log in again: "
        f"pdcat login --server {backend.url} -u admin"
    )
    assert pdcat_bare.json("whoami", env={"PDCAT_TOKEN": backend.token("e2e-env")})["subject"] == "e2e-env"
    pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password)
    assert pdcat_bare.json("whoami")["subject"] == "admin"

    # a keychain that will not delete: the login is forgotten all the same, and the secret left is named
    done = pdcat_bare.run("logout", env={"KEYRING_PROPERTY_FAIL": "delete"})
    assert done.code == 0 and f"Logged out of {backend.url}" in done.out
    assert done.err.strip() == (
        f"pdcat: warning: the keychain still holds the secret of {backend.url} (the keychain is locked: "
        f"remove service 'pdcat {tmp_path / 'config'}', account '{backend.url}')"
    )
    assert list(keychain(tmp_path)) == [backend.url] and not (tmp_path / "config" / "credentials.json").exists()


def test_a_single_login_file_from_before_is_read_then_migrated(
    backend: Any, pdcat_bare: Pdcat, password: str, tmp_path: Path
) -> None:
    old = {"server": backend.url + "/", "token": backend.token("old-login", ["USER"]), "api_key": None,
           "username": "old-login", "expires_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    path = tmp_path / "config" / "credentials.json"
    path.parent.mkdir()
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    assert pdcat_bare.json("whoami")["subject"] == "old-login"
    [context] = pdcat_bare.json("context", "ls")["items"]
    assert context == {"server": backend.url, "current": True, "username": "old-login", "auth": "token",
                       "expires_at": "2099-01-01T00:00:00Z", "cacert": None, "stored_in": "file",
                       "keychain": None}  # fmt: skip
    assert "token, until 2099-01-01T00:00:00Z" in pdcat_bare.ok("context", "ls").out
    pdcat_bare.ok("context", "use", backend.url)  # the next write: the file now has the new shape
    assert stored(tmp_path)["servers"][backend.url]["token"] == old["token"]
    assert stored(tmp_path)["current"] == backend.url and "server" not in stored(tmp_path)
    assert pdcat_bare.json("whoami")["subject"] == "old-login"
    pdcat_bare.ok("login", "--server", backend.url, "-u", "admin", "-p", password)  # a new login: the keychain
    assert "token" not in stored(tmp_path)["servers"][backend.url] and keychain(tmp_path)[backend.url]


# ---- several servers ------------------------------------------------------------------------------------
def test_two_servers_logged_in_at_once(
    backend: Any, pdcat_bare: Pdcat, password: str, second: tuple[RunningServer, str], cid: str, tmp_path: Path
) -> None:
    other, other_password = second
    a, b = backend.url, other.url
    pdcat_bare.ok("login", "--server", a, "-u", "admin", "-p", password)
    out = pdcat_bare.ok("login", "--server", b, "-u", "admin", "-p", other_password).out
    assert f"Logged in to {b}" in out
    listed = pdcat_bare.json("context", "ls")
    assert listed["current"] == b
    assert [(c["server"], c["current"], c["username"], c["auth"], c["stored_in"]) for c in listed["items"]] == [
        (a, False, "admin", "token", "keychain"),
        (b, True, "admin", "token", "keychain"),
    ]
    assert all(c["expires_at"] for c in listed["items"])
    text = pdcat_bare.ok("context", "ls").out
    [marked] = [line for line in text.splitlines() if line.startswith("*")]
    assert b in marked and "admin" in marked and "token, until" in marked and "keychain (file_keyring)" in marked
    for secret in keychain(tmp_path).values():
        assert secret not in text and secret not in json.dumps(listed)

    # each command goes to the current server, or to the one --server or PDCAT_SERVER names
    bundle = make_bundle(tmp_path / "src")
    pdcat_bare.push(bundle, f"{cid}-b", "1.0")  # to B, the current one
    assert "Using" in pdcat_bare.ok("context", "use", a.removeprefix("http://")).out  # host:port will do
    assert pdcat_bare.json("context", "ls")["current"] == a
    pdcat_bare.push(bundle, f"{cid}-a", "1.0")

    def ids(*args: str, env: dict[str, str | None] | None = None) -> set[str]:
        return {m["catalog_id"] for m in pdcat_bare.json("ls", *args, env=env)["items"]}

    assert f"{cid}-a" in ids() and f"{cid}-b" not in ids()
    assert ids("--server", b) == {f"{cid}-b"}
    assert ids(env={"PDCAT_SERVER": b}) == {f"{cid}-b"}
    assert pdcat_bare.json("context", "ls")["current"] == a  # --server is for one command

    # what cannot be picked says what can
    line = pdcat_bare.fail("context", "use", "nowhere.example")
    assert "no login for 'nowhere.example'" in line and a in line and b in line
    assert "could be" in pdcat_bare.fail("context", "use", "127.0.0.1")  # both servers have that host
    line = pdcat_bare.fail("context", "use", "http://127.0.0.1:9")
    assert "not logged in to http://127.0.0.1:9: run 'pdcat login --server http://127.0.0.1:9 -u USER'" in line

    # logging out of one leaves the other
    out = pdcat_bare.ok("logout", "--server", b).out
    assert f"Logged out of {b}; still logged in to {a}" in out
    assert list(keychain(tmp_path)) == [a]
    assert f"{cid}-a" in ids()
    assert f"not logged in to {b}: run 'pdcat login --server {b} -u USER'" in pdcat_bare.fail("ls", "--server", b)
    assert "Not logged in to" in pdcat_bare.ok("logout", "--server", b).out

    # logging out of the current one leaves none current: no command guesses which catalog is meant
    pdcat_bare.ok("login", "--server", b, "-u", "admin", "-p", other_password)
    pdcat_bare.ok("logout")
    line = pdcat_bare.fail("ls")
    assert f"you are logged in to {a}: pick one with 'pdcat context use SERVER'" in line
    assert "No current server" in pdcat_bare.ok("logout").out
    pdcat_bare.ok("login", "--server", b, "-u", "admin", "-p", other_password)

    out = pdcat_bare.ok("logout", "--all").out
    assert f"Logged out of {a}, {b}" in out
    assert keychain(tmp_path) == {} and not (tmp_path / "config" / "credentials.json").exists()
    assert pdcat_bare.json("context", "ls") == {"current": None, "items": []}
    assert "pdcat login" in pdcat_bare.fail("ls")

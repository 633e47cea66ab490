"""The login store (``client.config``) on real files and a real keyring backend (``tests/fakes/file_keyring``):
what the ``pdcat`` commands do not show directly. A saved token refresh touches its own server only;
every non-secret field of ``Credentials`` is kept per server; a keychain that drops secrets, or a login
moved to the file, leaves no secret behind; concurrent saves lose nothing; two config folders never
share a secret.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.config import Credentials, load_credentials, save_credentials, store_login
from tests.e2e.conftest import TEST_KEYRING
from tests.fakes.file_keyring import read_secrets

A, B = "http://a.example:8080", "https://b.example"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith(("PDCAT_", "KEYRING_PROPERTY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PDCAT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", TEST_KEYRING)
    monkeypatch.setenv("KEYRING_PROPERTY_PATH", str(tmp_path / "keychain.json"))
    return tmp_path


def secrets_of(home: Path, config: str = "config") -> dict[str, str]:
    return read_secrets(home / "keychain.json").get(f"pdcat {(home / config).resolve()}", {})


def current(home: Path) -> str | None:
    found: str | None = json.loads((home / "config" / "credentials.json").read_text())["current"]
    return found


def test_a_saved_token_refresh_changes_what_it_names_of_its_own_server_only(home: Path) -> None:
    store_login(Credentials(A, token="a-1", username="alice"), current=True)
    store_login(Credentials(B, api_key="pdk_b", username="bot"), current=True)
    save_credentials(Credentials(A, token="a-2", expires_at="2099-01-01T00:00:00Z"))  # the rest stays
    assert current(home) == B
    assert secrets_of(home) == {A: "a-2", B: "pdk_b"}
    assert load_credentials(A) == Credentials(A, token="a-2", username="alice", expires_at="2099-01-01T00:00:00Z")
    assert load_credentials() == Credentials(B, api_key="pdk_b", username="bot")
    save_credentials(Credentials(B, username="robot"))  # no secret given: the stored one stays
    assert load_credentials() == Credentials(B, api_key="pdk_b", username="robot")
    assert secrets_of(home) == {A: "a-2", B: "pdk_b"}


def test_every_field_that_is_not_a_secret_is_kept_per_server(home: Path) -> None:
    """Whatever fields ``Credentials`` has (a CA file, say), each non-secret one is stored with its server."""
    plain = [f.name for f in dataclasses.fields(Credentials) if f.name not in ("server", "token", "api_key")]
    creds = Credentials(A, token="t", **{name: f"value of {name}" for name in plain})
    store_login(creds, current=True)
    assert load_credentials(A) == creds
    entry = json.loads((home / "config" / "credentials.json").read_text())["servers"][A]
    assert {name: entry[name] for name in plain} == {name: f"value of {name}" for name in plain}
    assert "t" not in entry.values()


def test_a_keychain_that_drops_secrets_is_not_trusted(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    stored = store_login(Credentials(A, token="t-1"), current=True)
    assert (stored.stored_in, stored.fallback) == ("file", "the keychain (null) did not keep the secret")
    assert load_credentials().token == "t-1"


def test_a_login_moved_to_the_file_takes_its_secret_out_of_the_keychain(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store_login(Credentials(A, token="t-1"), current=True).stored_in == "keychain"
    monkeypatch.setenv("PDCAT_KEYRING", "0")
    assert store_login(Credentials(A, token="t-2"), current=True).stored_in == "file"
    assert secrets_of(home) == {}
    assert load_credentials().token == "t-2"


def test_logins_saved_at_once_are_all_kept(home: Path) -> None:
    def save(n: int) -> None:
        for i in range(15):
            save_credentials(Credentials(f"http://host-{n}-{i}.example", token=f"t-{n}-{i}"))

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(save, range(3)))  # raises what any of them raised
    servers = json.loads((home / "config" / "credentials.json").read_text())["servers"]
    assert len(servers) == 45 and len(secrets_of(home)) == 45


def test_two_config_folders_never_share_a_secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PDCAT_CONFIG_DIR`` keeps a second identity on the same server (another user, a CI account)."""
    store_login(Credentials(A, token="mine", username="alice"), current=True)
    monkeypatch.setenv("PDCAT_CONFIG_DIR", str(home / "other"))
    store_login(Credentials(A, token="theirs", username="bob"), current=True)
    assert load_credentials().token == "theirs"
    monkeypatch.setenv("PDCAT_CONFIG_DIR", str(home / "config"))
    assert load_credentials().token == "mine"
    assert secrets_of(home) == {A: "mine"} and secrets_of(home, "other") == {A: "theirs"}


def test_a_refresh_saves_only_over_the_token_it_renewed(home: Path) -> None:
    """``replacing`` is checked under the file's lock: a login made between a refresh's start and its
    save is never overwritten by the refreshed token."""
    a = "http://a.example:8080"
    store_login(Credentials(a, "token-1", None, "alice", "2099-01-01T00:00:00Z"), current=True)
    assert (
        save_credentials(Credentials(a, "renewed", None, "alice", "2099-01-02T00:00:00Z"), replacing="token-0") is None
    )
    assert load_credentials(a).token == "token-1"
    assert save_credentials(Credentials(a, "renewed", None, "alice", "2099-01-02T00:00:00Z"), replacing="token-1")
    assert (load_credentials(a).token, load_credentials(a).expires_at) == ("renewed", "2099-01-02T00:00:00Z")
    store_login(Credentials(a, None, "pdcat_key", "alice", None), current=True)  # now an API key login
    assert save_credentials(Credentials(a, "renewed-2", None, "alice", None), replacing="renewed") is None
    assert load_credentials(a).api_key == "pdcat_key"

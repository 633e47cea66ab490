"""The client refreshes a password login's token before it runs out (``client.token_refresh``), against
a real ``pdcat serve`` on loopback whose tokens last a minute. The client's clock is moved ahead instead
of waiting: the server still takes the token, the client already finds it near its end.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.api import CatalogClient
from client.cli.session import connect
from client.config import Credentials, load_credentials, save_credentials, store_login
from client.options import Options
from client.token_refresh import stored_login
from core.errors import Unauthenticated
from infra.local.servers import RunningServer, start_embedded

TTL = 60  # a refresh is due in the last 30 s (half of so short a life)
ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"PDCAT_TOKEN_TTL_SECONDS": str(TTL), "PDCAT_ADMIN_PASSWORD": ADMIN_PASSWORD, "PDCAT_LOG_LEVEL": "WARNING"}
    running = start_embedded(tmp_path_factory.mktemp("refresh") / "catalog", env=env)
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own credentials file, and no credential from the environment."""
    for name in ("PDCAT_SERVER", "PDCAT_TOKEN", "PDCAT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PDCAT_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config" / "credentials.json"


def _login(server: RunningServer, username: str = "admin", password: str = ADMIN_PASSWORD) -> Credentials:
    """``pdcat login``: the token is stored for the server."""
    with CatalogClient(server.url) as anonymous:
        answer = anonymous.login(username, password)
    save_credentials(Credentials(server.url, answer["token"], None, username, answer["expires_at"]))
    return load_credentials(server.url)


def _ahead(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def _user(server: RunningServer) -> tuple[str, str]:
    name, password = f"u-{secrets.token_hex(4)}", "pw-" + secrets.token_hex(8)
    with CatalogClient(server.url, login=stored_login(_login(server))) as admin:
        admin.add_user(name, password, ["USER"], [])
    return name, password


def test_a_fresh_token_is_used_as_it_is(server: RunningServer) -> None:
    creds = _login(server)
    with CatalogClient(server.url, login=stored_login(creds)) as api:
        assert api.whoami()["subject"] == "admin"
    assert load_credentials(server.url).token == creds.token


def test_a_token_near_its_end_is_refreshed_and_saved_for_the_next_command(server: RunningServer, config: Path) -> None:
    creds = _login(server)
    time.sleep(1.1)  # tokens are issued to the second: a refresh within it would be the same token
    with CatalogClient(server.url, login=stored_login(creds, clock=_ahead(TTL / 2 + 1))) as api:
        assert api.whoami()["subject"] == "admin"
        saved = load_credentials(server.url)
        assert saved.token != creds.token and saved.username == "admin"
        assert saved.expires_at is not None and saved.expires_at >= str(creds.expires_at)
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
        api.whoami()
        assert load_credentials(server.url).token == saved.token  # the new one is fresh: no second refresh
    with CatalogClient(server.url, token=saved.token) as next_command:
        assert next_command.whoami()["subject"] == "admin"


def test_a_token_from_the_environment_is_never_refreshed_nor_written(
    server: RunningServer, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = _login(server)
    with CatalogClient(server.url) as anonymous:
        from_env = anonymous.login("admin", ADMIN_PASSWORD)["token"]
    monkeypatch.setenv("PDCAT_TOKEN", from_env)
    with connect(Options(server=server.url)) as api:
        assert api._login is None  # sent as given, whatever its age
        assert api.whoami()["via"] == "token"
    assert load_credentials(server.url).token == from_env
    monkeypatch.delenv("PDCAT_TOKEN")
    assert load_credentials(server.url).token == stored.token  # the file still holds the stored login
    assert from_env not in config.read_text()


def test_a_login_saved_meanwhile_is_not_overwritten(server: RunningServer) -> None:
    """Logins made in another terminal during a long push: one to another server stays the current
    one (this server's token is still renewed in its own entry); a new login to this server wins."""
    creds = _login(server)
    time.sleep(1.1)
    with CatalogClient(server.url, login=stored_login(creds, clock=_ahead(TTL / 2 + 1))) as api:
        other = Credentials("http://other.example:8080", "another-login", None, "someone", "2099-01-01T00:00:00Z")
        store_login(other, current=True)  # `pdcat login --server ...` in another terminal
        assert api.whoami()["subject"] == "admin"  # refreshed, in memory and in this server's entry
    assert load_credentials().server == other.server
    assert load_credentials(other.server).token == "another-login"
    renewed = load_credentials(server.url).token
    assert renewed not in (None, creds.token)

    time.sleep(1.1)
    with CatalogClient(server.url, login=stored_login(load_credentials(server.url), clock=_ahead(TTL))) as api:
        again = Credentials(server.url, "a-new-login", None, "someone-else", "2099-01-01T00:00:00Z")
        store_login(again, current=True)  # `pdcat login` to this same server, meanwhile
        assert api.whoami()["subject"] == "admin"
    assert load_credentials(server.url).token == "a-new-login"


def test_a_refused_refresh_warns_then_says_log_in_again(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    name, password = _user(server)
    session = _login(server, name, password)
    with CatalogClient(server.url, login=stored_login(_login(server))) as admin:
        admin.set_user_roles(name, ["PUBLISHER"], [])
        admin.set_password(name, "pw-" + secrets.token_hex(8))  # ends her session
    clock = [TTL / 2 + 1]
    with CatalogClient(server.url, login=stored_login(session, clock=lambda: time.time() + clock[0])) as api:
        with caplog.at_level(logging.WARNING, logger="pdcat.login"):
            assert api.whoami()["roles"] == ["USER"]  # the token still works: the command goes on
        assert [r.getMessage() for r in caplog.records] == [
            "your login was not renewed; it works until its token expires: the password changed after this "
            f"login; log in again: pdcat login --server {server.url} -u {name}"
        ]
        clock[0] = TTL + 1
        with pytest.raises(Unauthenticated) as refused:
            api.whoami()
    assert str(refused.value.message).endswith(f"log in again: pdcat login --server {server.url} -u {name}")


def test_a_refreshed_token_has_the_users_new_roles(server: RunningServer) -> None:
    name, password = _user(server)
    session = _login(server, name, password)
    with CatalogClient(server.url, login=stored_login(_login(server))) as admin:
        admin.set_user_roles(name, ["PUBLISHER"], [])
    with CatalogClient(server.url, login=stored_login(session)) as fresh:
        assert fresh.whoami()["roles"] == ["USER"]
    with CatalogClient(server.url, login=stored_login(session, clock=_ahead(TTL / 2 + 1))) as due:
        assert due.whoami()["roles"] == ["PUBLISHER"]

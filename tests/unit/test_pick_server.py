"""Which stored login ``pdcat context use SERVER`` means (``client.config.pick_server``): a URL, or a host
only one stored server has; anything else is refused with the servers that can be picked."""

from __future__ import annotations

import pytest

from client.config import login_command, pick_server
from core.errors import InvalidInput, NotFound

KNOWN = ["http://127.0.0.1:8080", "http://127.0.0.1:9090", "https://catalog.example.com", "https://build.lan/pdcat"]


@pytest.mark.parametrize(
    ("text", "picked"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("127.0.0.1:9090", "http://127.0.0.1:9090"),
        ("catalog.example.com", "https://catalog.example.com"),
        ("CATALOG.example.com", "https://catalog.example.com"),
        ("build.lan", "https://build.lan/pdcat"),
        ("https://build.lan/pdcat", "https://build.lan/pdcat"),
    ],
)
def test_a_url_or_a_host_only_one_server_has_picks_it(text: str, picked: str) -> None:
    assert pick_server(text, KNOWN) == picked


def test_a_host_two_servers_share_asks_for_the_url() -> None:
    with pytest.raises(
        InvalidInput, match=r"could be http://127.0.0.1:8080, http://127.0.0.1:9090: give the whole URL"
    ):
        pick_server("127.0.0.1", KNOWN)


def test_an_unknown_server_names_the_known_ones() -> None:
    with pytest.raises(NotFound) as caught:
        pick_server("elsewhere.example", KNOWN)
    assert (
        caught.value.message == f"no login for 'elsewhere.example'; logged in to: {', '.join(KNOWN)} "
        "('pdcat login --server URL' adds one)"
    )
    with pytest.raises(NotFound, match=r"not logged in to https://build.lan: run 'pdcat login --server https://build"):
        pick_server("https://build.lan", KNOWN)  # a URL is matched whole
    with pytest.raises(NotFound, match=r"logged in to: none"):
        pick_server("catalog.example.com", [])


def test_the_login_command_fits_the_login() -> None:
    assert login_command("http://h:1") == "pdcat login --server http://h:1 -u USER"
    assert login_command("http://h:1", "alice") == "pdcat login --server http://h:1 -u alice"
    assert login_command("http://h:1", "alice", api_key=True) == "pdcat login --server http://h:1 --api-key -"

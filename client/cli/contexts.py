"""``pdcat context ls|use`` and what login and logout say about the stored logins: several servers
logged in at once, one current (docker's contexts, gh's hosts), each secret in the keychain or the file.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from client.cli.session import Connect, common, say
from client.config import Context, Forgotten, StoredLogin, contexts, use_context
from client.output import columns, console, print_json
from core.errors import InvalidInput

__all__ = ["cmd_context", "logged_out", "saved_where"]


def saved_where(stored: StoredLogin, secret: str) -> str:
    """Where ``store_login`` put the login, for the login message: the one place a fallback to the file
    is mentioned."""
    if stored.stored_in == "keychain":
        return f"the {secret} is in the keychain ({stored.keychain}), the rest in {stored.path}"
    if stored.fallback == "PDCAT_KEYRING=0":
        return f"the {secret} is in {stored.path}, readable only by you (PDCAT_KEYRING=0)"
    return f"no usable keychain ({stored.fallback}), so the {secret} is in {stored.path}, readable only by you"


def logged_out(gone: Forgotten) -> str:
    """What ``pdcat logout`` did, and what is left."""
    left = ", ".join(gone.left)
    if not gone.servers:
        if not gone.left:
            return "Not logged in: nothing to remove"
        if gone.asked:
            return f"Not logged in to {gone.asked}: nothing to remove (logged in to: {left})"
        return f"No current server to log out of; logged in to {left}: name one with --server URL, or pass --all"
    text = f"Logged out of {', '.join(gone.servers)}"
    if gone.left:
        text += f"; still logged in to {left} ('pdcat context use SERVER' picks the current one)"
    return text


def _expiry(expires_at: str | None) -> str:
    if not expires_at:
        return ""
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        return f", until {expires_at}"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return f", {'expired' if when <= datetime.now(UTC) else 'until'} {expires_at}"


def _how(c: Context) -> str:
    if c.auth == "api_key":
        return "API key"
    if c.auth == "token":
        return "token" + _expiry(c.details.get("expires_at"))
    return "-"


def _where(c: Context) -> str:
    if c.stored_in == "keychain":
        return f"keychain ({c.keychain})"
    return c.stored_in or "-"


def cmd_context(args: argparse.Namespace, connect: Connect) -> int:
    """``ls``: every stored login, the current one marked; ``use SERVER``: make one current (its URL, or
    a host only one stored server has)."""
    if args.action == "use":
        if not args.name:
            raise InvalidInput("context use needs a SERVER: its URL, or its host ('pdcat context ls' lists them)")
        url = use_context(args.name)
        say(common(args), f"Using {url}")
        return 0
    found = contexts()
    if args.json:
        current = next((c.server for c in found if c.current), None)
        print_json({"current": current, "items": [c.as_json() for c in found]})
        return 0
    if not found:
        console().print("Not logged in anywhere: pdcat login --server URL -u USER", markup=False)
        return 0
    rows = [("*" if c.current else "", c.server, c.details.get("username") or "-", _how(c), _where(c)) for c in found]
    print(columns(("", "SERVER", "USER", "AUTH", "SECRET IN"), rows))
    return 0

"""Where the client keeps its logins: one per catalog server, for any number of servers, one of them
current (``pdcat context``), as docker's contexts and gh's hosts do.

``<user config dir>/pdcat/credentials.json`` (mode 0600) holds what is not secret: per server, the
fields of :class:`Credentials` other than the secrets (username, token expiry, and whatever a later
field adds), how it authenticates and where its secret is. The secret (a token or an API key) goes into
the system keychain (``client.keychain``); where there is none, or with ``PDCAT_KEYRING=0``, into this
file, as before. A file written by an older pdcat (one login, its secret inline) is read as it is and
rewritten in this shape by the next change.

``PDCAT_SERVER``, ``PDCAT_TOKEN`` and ``PDCAT_API_KEY`` override what is stored, so scripts and CI
never need to write a credential to disk: a credential in the environment replaces the stored login
entirely (as ``GH_TOKEN`` does for gh), never joins it. ``PDCAT_SERVER`` (or ``--server``) alone picks
which stored login a command uses. ``PDCAT_CACERT`` replaces the CA certificate stored with the login
(``pdcat login --cacert``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

from platformdirs import user_config_dir

from client import keychain
from core.errors import InvalidInput, NotFound, Unauthenticated

__all__ = [
    "Context",
    "Credentials",
    "Forgotten",
    "StoredLogin",
    "cacert_override",
    "config_dir",
    "contexts",
    "forget_credentials",
    "load_credentials",
    "login_command",
    "normalize_server",
    "pick_server",
    "save_credentials",
    "store_login",
    "use_context",
]

#: The fields of :class:`Credentials` that are secrets: kept in the keychain, or inline as a fallback.
_SECRETS = ("token", "api_key")


def normalize_server(url: str) -> str:
    """A catalog URL as stored and compared: ``http(s)://host[:port][/path]`` without trailing slashes."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        example = text.split("/")[0] or "catalog.example.com:8080"
        raise InvalidInput(f"{text[:80]!r} is not a catalog URL: write it with its scheme, e.g. http://{example[:60]}")
    return text.rstrip("/")


def config_dir() -> Path:
    override = os.environ.get("PDCAT_CONFIG_DIR")
    return Path(override) if override else Path(user_config_dir("pdcat"))


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    api_key: str | None = None
    username: str | None = None
    expires_at: str | None = None
    cacert: str | None = None  # a CA (or the server's self-signed certificate) trusted for this server

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r}, username={self.username!r})"


def _plain_fields() -> tuple[str, ...]:
    """The fields of :class:`Credentials` stored per server as they are: all but the server and the
    secrets, so a field added to the class is kept without touching the file's format."""
    return tuple(f.name for f in fields(Credentials) if f.name != "server" and f.name not in _SECRETS)


def login_command(server: str, username: str | None = None, *, api_key: bool = False) -> str:
    """The command that logs in to ``server`` again, as the messages that ask for it write it."""
    how = "--api-key -" if api_key else f"-u {username or 'USER'}"
    return f"pdcat login --server {server} {how}"


# ---- the file -----------------------------------------------------------------------------------------
@dataclass
class _Logins:
    current: str | None = None
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _path() -> Path:
    return config_dir() / "credentials.json"


def _read() -> _Logins:
    """The stored logins; an unreadable file counts as none (the next login rewrites it)."""
    try:
        stored = json.loads(_path().read_text())
    except (FileNotFoundError, ValueError):
        return _Logins()
    if not isinstance(stored, dict):
        return _Logins()
    if "servers" not in stored:
        return _from_single_login(stored)
    servers = stored["servers"] if isinstance(stored["servers"], dict) else {}
    logins = _Logins(servers={str(k): v for k, v in servers.items() if isinstance(v, dict)})
    current = stored.get("current")
    logins.current = current if isinstance(current, str) and current in logins.servers else None
    return logins


def _from_single_login(stored: dict[str, Any]) -> _Logins:
    """An older pdcat's file: one login, its secret inline."""
    try:
        url = normalize_server(str(stored.get("server") or ""))
    except InvalidInput:
        return _Logins()
    entry = {name: stored[name] for name in _plain_fields() if stored.get(name) is not None}
    for kind in _SECRETS:
        if stored.get(kind):
            entry.update({"auth": kind, "stored_in": "file", kind: stored[kind]})
            break
    return _Logins(url, {url: entry})


def _write(logins: _Logins) -> Path:
    """Atomic write with 0600 from the first byte (a secret may be inline); no logins left, no file."""
    path = _path()
    if not logins.servers:
        path.unlink(missing_ok=True)
        return path
    data = {"version": 2, "current": logins.current, "servers": logins.servers}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _changing() -> Iterator[_Logins]:
    """Read, change and write the logins under a lock: two commands saving two servers' logins at once
    (two logins, two token refreshes) must not lose either."""
    from filelock import FileLock

    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".credentials.lock")):
        logins = _read()
        yield logins
        _write(logins)


def _service() -> str:
    """The keychain's service name: "pdcat"; a config folder of its own (``PDCAT_CONFIG_DIR``) keeps its
    logins apart, so its secrets get a service of their own and never replace the usual ones."""
    if "PDCAT_CONFIG_DIR" not in os.environ:
        return "pdcat"
    return f"pdcat {config_dir().resolve()}"


def _place(entry: dict[str, Any]) -> keychain.Place | None:
    found = entry.get("keychain") if entry.get("stored_in") == "keychain" else None
    if not isinstance(found, dict):
        return None
    try:
        return keychain.Place(str(found["backend"]), str(found["service"]), str(found["account"]))
    except KeyError:
        return None


# ---- reading ------------------------------------------------------------------------------------------
def _secret(url: str, entry: dict[str, Any]) -> str | None:
    auth = entry.get("auth")
    if auth not in _SECRETS:
        return None
    if entry.get("stored_in") != "keychain":
        return str(entry[auth]) if entry.get(auth) else None
    again = login_command(url, entry.get("username"), api_key=auth == "api_key")
    place = _place(entry)
    if place is None:
        raise Unauthenticated(f"your login to {url} does not say where its secret is: log in again: {again}")
    try:
        secret = keychain.read(place)
    except keychain.Unusable as exc:
        raise Unauthenticated(
            f"cannot read your login to {url} from the keychain ({exc.reason}): unlock it, or log in again: {again}"
        ) from None
    if not secret:
        raise Unauthenticated(f"your login to {url} is no longer in the keychain: log in again: {again}")
    return secret


def _credentials(url: str, entry: dict[str, Any]) -> Credentials:
    plain = {name: None if entry.get(name) is None else str(entry[name]) for name in _plain_fields()}
    secret = _secret(url, entry)
    secrets = {str(entry["auth"]): secret} if secret else {}
    return Credentials(url, **secrets, **plain)


def cacert_override() -> str | None:
    """``PDCAT_CACERT``: the CA certificate to trust instead of the one stored with the login."""
    return os.environ.get("PDCAT_CACERT") or None


def load_credentials(server: str | None = None) -> Credentials:
    """The server (``server``, else ``PDCAT_SERVER``, else the current one) and the credential for it:
    ``PDCAT_TOKEN`` or ``PDCAT_API_KEY`` if set (one of them), else that server's stored login. The
    keychain is asked only for a stored login's secret."""
    logins = _read()
    url = server or os.environ.get("PDCAT_SERVER") or logins.current
    if not url:
        if logins.servers:
            raise Unauthenticated(
                f"no current catalog server; you are logged in to {', '.join(logins.servers)}: pick one with "
                "'pdcat context use SERVER', or pass --server URL"
            )
        raise Unauthenticated("no catalog server: run 'pdcat login --server URL -u USER' or set PDCAT_SERVER")
    url = normalize_server(url)
    env_token, env_key = os.environ.get("PDCAT_TOKEN") or None, os.environ.get("PDCAT_API_KEY") or None
    if env_token and env_key:
        raise InvalidInput("PDCAT_TOKEN and PDCAT_API_KEY are both set: keep the one this command should use")
    if env_token or env_key:
        return Credentials(url, env_token, env_key, cacert=cacert_override())
    entry = logins.servers.get(url)
    creds = Credentials(url) if entry is None else _credentials(url, entry)
    override = cacert_override()
    return replace(creds, cacert=override) if override else creds


# ---- saving -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredLogin:
    """Where a login went: the file, and where its secret is (``fallback``: why not in the keychain)."""

    server: str
    path: Path
    stored_in: str | None  # "keychain", "file", or None for a login without a secret
    keychain: str | None = None  # the backend's short name, when in the keychain
    fallback: str | None = None


def _keep_secret(url: str, secret: str) -> tuple[keychain.Place | None, str | None]:
    """Into the keychain if there is a usable one; else (None, why not)."""
    if not keychain.enabled():
        return None, "PDCAT_KEYRING=0"
    try:
        return keychain.store(_service(), url, secret), None
    except keychain.Unusable as exc:
        return None, exc.reason


@overload
def store_login(creds: Credentials, *, current: bool, update: bool = False) -> StoredLogin: ...
@overload
def store_login(
    creds: Credentials, *, current: bool, update: bool = False, replacing: str | None
) -> StoredLogin | None: ...
def store_login(
    creds: Credentials, *, current: bool, update: bool = False, replacing: str | None = None
) -> StoredLogin | None:
    """Add or replace the login of ``creds.server``; ``current``: make it the one commands use (the first
    login is current anyway). ``update``: a field ``creds`` leaves None keeps its stored value, the secret
    too. A secret it had in the keychain that the new login does not keep there is deleted.
    ``replacing``: change nothing (None) unless the stored token is still this one."""
    url = normalize_server(creds.server)
    plain = _plain_fields()
    kind = next((name for name in _SECRETS if getattr(creds, name)), None)
    place, fallback = None, None
    with _changing() as logins:
        before = logins.servers.get(url) or {}
        if replacing is not None and (before.get("auth") != "token" or _secret(url, before) != replacing):
            return None
        entry: dict[str, Any] = {k: v for k, v in before.items() if k in plain} if update else {}
        entry.update({name: getattr(creds, name) for name in plain if getattr(creds, name)})
        if kind is not None:
            secret = str(getattr(creds, kind))
            place, fallback = _keep_secret(url, secret)
            entry["auth"] = kind
            if place is not None:
                entry.update({"stored_in": "keychain", "keychain": asdict(place)})
            else:
                entry.update({"stored_in": "file", kind: secret})
        elif update:
            entry.update({k: v for k, v in before.items() if k not in plain})
            place = _place(before)
        old = _place(before)
        if old is not None and old != place:
            # the new login works whatever happens here: the old secret is a token that expires, or a key
            with suppress(keychain.Unusable):
                keychain.delete(old)
        logins.servers[url] = entry
        if current or logins.current is None:
            logins.current = url
    label = keychain.backend_label(place.backend) if place else None
    return StoredLogin(url, _path(), entry.get("stored_in"), label, fallback)


def save_credentials(creds: Credentials, *, replacing: str | None = None) -> Path | None:
    """Save what changed in the login of ``creds.server`` (a refreshed token and its expiry, say): fields
    left None keep their stored values, and the current server stays the current one.

    ``replacing``: save only while that server's stored token is still this one, checked under the
    file's lock, so a refresh never overwrites a login made meanwhile; None when it was not saved."""
    stored = store_login(creds, current=False, update=True, replacing=replacing)
    return None if stored is None else stored.path


# ---- forgetting, listing, switching ----------------------------------------------------------------------
@dataclass(frozen=True)
class Forgotten:
    """What a logout did: the server it was asked to forget (None: all, or there was no current one),
    the servers forgotten, those still logged in, and the secrets the keychain kept."""

    asked: str | None
    servers: list[str]
    path: Path
    left: list[str]
    problems: list[str]


def forget_credentials(server: str | None = None, *, everything: bool = False) -> Forgotten:
    """Forget one server's login (``server``, else ``PDCAT_SERVER``, else the current one), or every
    one, deleting their secrets from the keychain. The tokens stay valid until they expire: they are
    bearer tokens."""
    asked = None
    with _changing() as logins:
        if everything:
            targets = list(logins.servers)
        else:
            wanted = server or os.environ.get("PDCAT_SERVER") or logins.current
            asked = normalize_server(wanted) if wanted else None
            targets = [asked] if asked in logins.servers else []
        problems = []
        for url in targets:
            place = _place(logins.servers.pop(url))
            if place is None:
                continue
            try:
                keychain.delete(place)
            except keychain.Unusable as exc:
                problems.append(f"{url} ({exc.reason}: remove service {place.service!r}, account {url!r})")
        if logins.current in targets:
            logins.current = None
    return Forgotten(asked, targets, _path(), list(logins.servers), problems)


@dataclass(frozen=True)
class Context:
    """One stored login as ``pdcat context ls`` shows it: never its secret."""

    server: str
    current: bool
    auth: str | None  # "token" or "api_key"
    stored_in: str | None  # "keychain" or "file"
    keychain: str | None  # the keychain backend's short name
    details: dict[str, str | None]  # the plain fields of Credentials: username, expires_at, ...

    def as_json(self) -> dict[str, Any]:
        return {"server": self.server, "current": self.current, **self.details, "auth": self.auth,
                "stored_in": self.stored_in, "keychain": self.keychain}  # fmt: skip


def contexts() -> list[Context]:
    logins = _read()
    found = []
    for url, entry in logins.servers.items():
        place = _place(entry)
        details = {name: None if entry.get(name) is None else str(entry[name]) for name in _plain_fields()}
        auth = entry.get("auth") if entry.get("auth") in _SECRETS else None
        label = keychain.backend_label(place.backend) if place else None
        found.append(Context(url, url == logins.current, auth, entry.get("stored_in"), label, details))
    return found


def pick_server(text: str, known: Sequence[str]) -> str:
    """The stored server ``text`` names: its URL, or its host (``host`` or ``host:port``) when exactly one
    stored server has that host."""
    names = ", ".join(known) or "none"
    if "://" in text:
        url = normalize_server(text)
        if url in known:
            return url
        raise NotFound(f"not logged in to {url}: run '{login_command(url)}' first (logged in to: {names})")
    wanted = text.strip().rstrip("/").lower()
    found = [url for url in known if wanted in (urlsplit(url).netloc.lower(), (urlsplit(url).hostname or "").lower())]
    if len(found) == 1:
        return found[0]
    if found:
        raise InvalidInput(f"{text!r} could be {', '.join(found)}: give the whole URL")
    raise NotFound(f"no login for {text!r}; logged in to: {names} ('pdcat login --server URL' adds one)")


def use_context(text: str) -> str:
    """Make the stored server ``text`` names (:func:`pick_server`) the current one; returns its URL."""
    with _changing() as logins:
        url = pick_server(text, list(logins.servers))
        logins.current = url
    return url

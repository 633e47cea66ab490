"""Where the client keeps its login: ``<user config dir>/pdcat/credentials.json``, mode 0600.

``PDCAT_SERVER``, ``PDCAT_TOKEN`` and ``PDCAT_API_KEY`` override what is stored, so scripts and CI
never need to write a credential to disk: a credential in the environment replaces the stored login
entirely (as ``GH_TOKEN`` does for gh), never joins it. ``PDCAT_CACERT`` likewise replaces the CA
certificate stored with the login (``pdcat login --cacert``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from platformdirs import user_config_dir

from core.errors import InvalidInput, Unauthenticated

__all__ = [
    "Credentials",
    "cacert_override",
    "config_dir",
    "forget_credentials",
    "load_credentials",
    "normalize_server",
    "save_credentials",
]


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


def _path() -> Path:
    return config_dir() / "credentials.json"


def save_credentials(creds: Credentials) -> Path:
    """Atomic write with 0600 from the first byte: the token is as good as a password."""
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "server": creds.server,
        "token": creds.token,
        "api_key": creds.api_key,
        "username": creds.username,
        "expires_at": creds.expires_at,
        "cacert": creds.cacert,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def forget_credentials() -> Path | None:
    """Remove the stored login; the file it was in, or None if there was none."""
    path = _path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def _stored() -> dict[str, str | None]:
    try:
        stored = json.loads(_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def cacert_override() -> str | None:
    """``PDCAT_CACERT``: the CA certificate to trust instead of the one stored with the login."""
    return os.environ.get("PDCAT_CACERT") or None


def load_credentials(server: str | None = None) -> Credentials:
    """The server (``server``, else ``PDCAT_SERVER``, else the stored one) and the credential for it:
    ``PDCAT_TOKEN`` or ``PDCAT_API_KEY`` if set (one of them), else the stored token for that server."""
    stored = _stored()
    url = server or os.environ.get("PDCAT_SERVER") or stored.get("server")
    if not url:
        raise Unauthenticated("no catalog server: run 'pdcat login --server URL -u USER' or set PDCAT_SERVER")
    url = normalize_server(url)
    env_token, env_key = os.environ.get("PDCAT_TOKEN") or None, os.environ.get("PDCAT_API_KEY") or None
    if env_token and env_key:
        raise InvalidInput("PDCAT_TOKEN and PDCAT_API_KEY are both set: keep the one this command should use")
    if env_token or env_key:
        return Credentials(url, env_token, env_key, cacert=cacert_override())
    same = False
    if stored.get("server"):
        try:
            same = normalize_server(str(stored["server"])) == url
        except InvalidInput:
            same = False
    if not same:
        return Credentials(url, cacert=cacert_override())
    return Credentials(
        url,
        stored.get("token"),
        stored.get("api_key"),
        stored.get("username"),
        stored.get("expires_at"),
        cacert_override() or stored.get("cacert"),
    )

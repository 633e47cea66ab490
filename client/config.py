"""Where the client keeps its login: ``<user config dir>/pdcat/credentials.json``, mode 0600.

``PDCAT_SERVER``, ``PDCAT_TOKEN`` and ``PDCAT_API_KEY`` override what is stored, so scripts and CI
never need to write a credential to disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_config_dir

from core.errors import Unauthenticated

__all__ = ["Credentials", "config_dir", "load_credentials", "save_credentials"]


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

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r}, username={self.username!r})"


def _path() -> Path:
    return config_dir() / "credentials.json"


def save_credentials(creds: Credentials) -> Path:
    """Atomic write with 0600 from the first byte: the token is as good as a password."""
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"server": creds.server, "token": creds.token, "username": creds.username, "expires_at": creds.expires_at}
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


def load_credentials(server: str | None = None) -> Credentials:
    stored: dict[str, str | None] = {}
    try:
        stored = json.loads(_path().read_text())
    except (FileNotFoundError, ValueError):
        stored = {}
    url = server or os.environ.get("PDCAT_SERVER") or stored.get("server")
    if not url:
        raise Unauthenticated("no catalog server: run 'pdcat login --server URL -u USER' or set PDCAT_SERVER")
    token = os.environ.get("PDCAT_TOKEN") or (stored.get("token") if url == stored.get("server") else None)
    api_key = os.environ.get("PDCAT_API_KEY") or None
    return Credentials(url, token, api_key, stored.get("username"), stored.get("expires_at"))

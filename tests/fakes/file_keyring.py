"""A keychain for the tests: a real ``keyring`` backend that keeps secrets in a JSON file.

No test machine has an OS keychain (keyring picks its fail backend on Linux CI), and a test must never
write into a developer's own. ``pdcat`` picks this backend as it would any other, through keyring:
``PYTHON_KEYRING_BACKEND=tests.fakes.file_keyring.FileKeyring``, with keyring's own property variables
for its settings:

- ``KEYRING_PROPERTY_PATH``: the JSON file, ``{service: {account: secret}}`` (required);
- ``KEYRING_PROPERTY_FAIL``: ``get``, ``set`` and/or ``delete`` (comma-separated): those operations
  raise ``KeyringLocked``, as a locked keychain does.

A test reads the file to see what pdcat stored, and edits it to take a secret away.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from keyring.backend import KeyringBackend
from keyring.errors import InitError, KeyringLocked, PasswordDeleteError

__all__ = ["FileKeyring", "read_secrets"]


def read_secrets(path: Path) -> dict[str, dict[str, str]]:
    """Everything the keychain at ``path`` holds ({} before anything was stored)."""
    try:
        found: dict[str, dict[str, str]] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return found


class FileKeyring(KeyringBackend):
    priority: Any = 1  # a plain number: keyring reads it on the class
    path: str = ""
    fail: str = ""

    def _file(self, operation: str) -> Path:
        if operation in self.fail.split(","):
            raise KeyringLocked(f"the test keychain refuses to {operation} (KEYRING_PROPERTY_FAIL)")
        if not self.path:
            raise InitError("set KEYRING_PROPERTY_PATH to the test keychain's file")
        return Path(self.path)

    def _save(self, path: Path, secrets: dict[str, dict[str, str]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keyring-")
        with os.fdopen(fd, "w") as f:
            json.dump(secrets, f)
        os.replace(tmp, path)

    def get_password(self, service: str, username: str) -> str | None:
        return read_secrets(self._file("get")).get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        path = self._file("set")
        secrets = read_secrets(path)
        secrets.setdefault(service, {})[username] = password
        self._save(path, secrets)

    def delete_password(self, service: str, username: str) -> None:
        path = self._file("delete")
        secrets = read_secrets(path)
        if username not in secrets.get(service, {}):
            raise PasswordDeleteError("no such secret")
        del secrets[service][username]
        self._save(path, secrets)

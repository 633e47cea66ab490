"""A local folder (or a mounted share) as a store: ``<catalog_path>/<key>``.

Writes go to a temporary name in the destination folder and are renamed into place, so a reader
(or a crash) never leaves half a pack under its real name; ``list`` skips those temporary names.
Every key is checked twice: by the shared key rules (no ``..``, no absolute paths) and by resolving
the final path, symlinks included, which must stay inside the folder.
"""

from __future__ import annotations

import builtins
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from client.byo.common import TEMP_MARK, atomic_destination, is_listable, validate_key, validate_prefix
from client.byo.connection import LocalConnection
from core.errors import Forbidden, InvalidInput, NotFound

__all__ = ["LocalStorage"]


class LocalStorage:
    """:class:`~client.byo.providers.Storage` over a folder; it is created on the first write."""

    def __init__(self, conn: LocalConnection) -> None:
        self._root = Path(conn.catalog_path).expanduser().absolute()
        self.description = conn.description

    def __repr__(self) -> str:
        return f"LocalStorage({str(self._root)!r})"

    def _path(self, key: str) -> Path:
        path = self._root / validate_key(key)
        real_root = os.path.realpath(self._root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root or real == real_root:
            raise InvalidInput(f"storage key {key!r} leads outside {self.description}")
        return path

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"{key!r} in {self.description} does not exist")
        return path

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            with atomic_destination(dest) as tmp:
                shutil.copyfile(path, tmp)
        except PermissionError as exc:
            raise Forbidden(f"no permission to write {key!r} in {self.description}") from exc

    def get_file(self, key: str, dest: Path) -> None:
        source = self._existing(key)
        with atomic_destination(dest) as tmp:
            shutil.copyfile(source, tmp)

    def open_read(self, key: str) -> BinaryIO:
        return self._existing(key).open("rb")

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        try:
            with atomic_destination(dest) as tmp:
                tmp.write_bytes(data)
        except PermissionError as exc:
            raise Forbidden(f"no permission to write {key!r} in {self.description}") from exc

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._list(validate_prefix(prefix))

    def _list(self, prefix: str) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        start = self._root / folder if folder else self._root
        if not start.is_dir():
            return
        found: builtins.list[str] = []
        for directory, subdirs, files in os.walk(start):  # does not follow symlinked folders
            subdirs[:] = [d for d in subdirs if not d.startswith(TEMP_MARK)]
            relative = Path(directory).relative_to(self._root).as_posix()
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix) and not name.startswith(TEMP_MARK) and is_listable(key):
                    found.append(key)
        yield from sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except IsADirectoryError:
            raise InvalidInput(f"{key!r} in {self.description} is a folder, not a stored file") from None

    def close(self) -> None:
        """Nothing to release."""

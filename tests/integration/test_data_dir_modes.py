"""The embedded catalog's data folder is private: the folder 0700, every file in it 0600 (the
database and its -wal/-shm, the secrets, blob objects and their temp files), whatever the umask."""

from __future__ import annotations

import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.local.bootstrap import open_local_catalog
from core.local.file_blobs import FileBlobStore
from core.storage_layout import staging_chunk_key
from infra.local.servers import start_embedded

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


@pytest.fixture
def lax_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The usual 022 (files 0644 by default), so only the code's own modes can make them private.

    The in-process cloud backends put ``PDCAT_JWT_SECRET`` in this process's environment; without it
    the catalog keeps its secret in a file of the data folder, which is what these tests check."""
    monkeypatch.delenv("PDCAT_JWT_SECRET", raising=False)
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _open_and_use(data: Path) -> dict[str, int]:
    """Open the catalog, write to it, and report every file's mode while it is open (-wal and -shm
    exist only then)."""
    catalog = open_local_catalog(data, "http://127.0.0.1:9")
    try:
        catalog.db.connection().execute("PRAGMA wal_checkpoint")
        catalog.blobs.put_bytes(staging_chunk_key(secrets.token_hex(8), "e" * 64), b"chunk")
        return {str(p.relative_to(data)): _mode(p) for p in _files(data)}
    finally:
        catalog.close()


def test_a_new_data_folder_is_private_whatever_the_umask(tmp_path: Path, lax_umask: None) -> None:
    data = tmp_path / "data"
    modes = _open_and_use(data)
    names = {Path(name).name for name in modes}
    assert {"catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "jwt-secret", "blob-signing-key"} <= names
    assert "initial-admin-password" in names and any(name.startswith("blobs/objects/staging/") for name in modes)
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o600} == {}
    for directory in (data, data / "blobs", data / "blobs" / "objects", data / "blobs" / "tmp"):
        assert _mode(directory) == 0o700, directory


def test_an_older_data_folder_is_tightened_on_open(tmp_path: Path, lax_umask: None) -> None:
    data = tmp_path / "data"
    _open_and_use(data)
    for path in [data, data / "blobs", data / "blobs" / "objects", data / "blobs" / "tmp"]:
        os.chmod(path, 0o755)
    for path in _files(data):  # blob objects were always written 0600 (mkstemp); the rest was not
        if "blobs" not in path.relative_to(data).parts:
            os.chmod(path, 0o644)
    modes = _open_and_use(data)
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o600} == {}
    assert _mode(data) == _mode(data / "blobs" / "objects") == _mode(data / "blobs" / "tmp") == 0o700


def test_blob_temp_files_are_private(tmp_path: Path, lax_umask: None) -> None:
    store = FileBlobStore(tmp_path / "blobs", "http://127.0.0.1:9", b"k" * 32)

    class Watching:
        """A body that looks at the temp file it is being written into."""

        seen: list[int] = []

        def read(self, n: int) -> bytes:
            temps = list((tmp_path / "blobs" / "tmp").iterdir())
            self.seen.extend(_mode(p) for p in temps)
            return b"x" * n

    store.write_stream("a/b", Watching(), 10)  # type: ignore[arg-type]
    assert Watching.seen and set(Watching.seen) == {0o600}
    assert _mode(tmp_path / "blobs" / "objects" / "a" / "b") == 0o600


def test_pdcat_serve_keeps_everything_in_its_data_folder_private(tmp_path: Path, lax_umask: None) -> None:
    server = start_embedded(tmp_path / "data")
    try:
        signing_key = bytes.fromhex((server.data_dir / "blob-signing-key").read_text().strip())
        store = FileBlobStore(server.data_dir / "blobs", server.url, signing_key)
        url = store.presign(staging_chunk_key(secrets.token_hex(8), "f" * 64), "PUT", 60)
        assert httpx.put(url, content=b"z" * 300_000, timeout=10).status_code == 200
        login = {"username": "admin", "password": "wrong"}
        assert httpx.post(server.url + "/api/v1/auth/token", json=login, timeout=10).status_code == 401
        data = server.data_dir
        everything = [data, *data.rglob("*")]
        wrong = {
            str(p.relative_to(data)): oct(_mode(p)) for p in everything if _mode(p) != (0o700 if p.is_dir() else 0o600)
        }
        assert wrong == {}
        assert (data / "catalog.sqlite-wal").exists()
    finally:
        server.stop()

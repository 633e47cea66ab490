"""A pull whose version vanishes under it (rm, rm --purge, revoke) removes its partial folder and
journal, since no resume could ever finish; network errors and 5xx keep them, so a rerun resumes.

The transfer engine (client.transfer.download) runs on a tmp folder against a fake catalog and a
mocked storage; the real command against a real server is in tests/e2e/test_hardening_cli.py.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.blobio import BlobClient, BlobMissing, RetriesExceeded
from client.packer import compress
from client.transfer import NoProgress, TransferConfig, download, partial_paths
from core.errors import Gone, NotFound
from core.pack import PackIndex

CHUNK = 4096
KEY = ("vm", "1.0", "x86_64")


def _pack(n: int) -> tuple[PackIndex, dict[str, bytes]]:
    chunks: dict[str, bytes] = {}
    entries = []
    for i in range(n):
        raw = bytes([i + 1]) * CHUNK
        digest = hashlib.sha256(raw).hexdigest()
        chunks[digest] = raw
        entries.append({"offset": i * CHUNK, "size": CHUNK, "digest": digest})
    doc = {"chunk_size": CHUNK, "files": [{"path": "disk.hds", "type": "file", "size": n * CHUNK, "chunks": entries}]}
    return PackIndex.parse(doc), chunks


class FakeCatalog:
    """What download() asks the catalog: URLs a page at a time (or an error once ``fail`` is set)."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.asked = 0

    def pull_urls(self, catalog_id: str, version: str, architecture: str, digests: list[str]) -> dict[str, str]:
        self.asked += 1
        if self.fail is not None:
            raise self.fail
        return {d: f"http://storage.test/{d}?sig=x" for d in digests}

    def report_corrupt(self, *args: Any) -> dict[str, list[str]]:
        return {"quarantined": []}


def _storage(chunks: dict[str, bytes], answer: Callable[[int, str], httpx.Response | None]) -> BlobClient:
    """Mocked storage: ``answer(n, digest)`` for the n-th GET (None: serve the chunk)."""
    lock = threading.Lock()
    count = [0]

    def handle(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.strip("/")
        with lock:
            count[0] += 1
            n = count[0]
        special = answer(n, digest)
        return special if special is not None else httpx.Response(200, content=compress(chunks[digest]))

    return BlobClient(transport=httpx.MockTransport(handle), retries=1, backoff=0.001)


def _run(tmp_path: Path, catalog: FakeCatalog, blobs: BlobClient, index: PackIndex) -> Path:
    final = tmp_path / "dest" / "vm.pvm"
    manifest = {"catalog_id": KEY[0], "version": KEY[1], "architecture": KEY[2]}
    download(
        catalog,  # type: ignore[arg-type]
        manifest,
        index,
        {},
        final,
        config=TransferConfig(workers=1, chunk_delay=0),
        progress=NoProgress(),
        blobs=blobs,
    )
    return final


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDCAT_CACHE_DIR", str(tmp_path / "cache"))  # where the pull lock lives


def _left(tmp_path: Path) -> list[str]:
    dest = tmp_path / "dest"
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_storage_404_mid_pull_removes_the_partial_folder_and_journal(tmp_path: Path) -> None:
    index, chunks = _pack(6)
    blobs = _storage(chunks, lambda n, d: httpx.Response(404, text="NoSuchKey") if n >= 3 else None)
    with pytest.raises(NotFound) as info:
        _run(tmp_path, FakeCatalog(), blobs, index)
    message = info.value.message
    assert message.startswith("vm:1.0 (x86_64) was deleted or purged while pulling") and "removed" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, BlobMissing)
    assert _left(tmp_path) == []


def test_catalog_404_for_fresh_urls_mid_pull_removes_everything(tmp_path: Path) -> None:
    index, chunks = _pack(6)
    catalog = FakeCatalog()

    def storage(n: int, digest: str) -> httpx.Response | None:
        if n == 3:  # the URLs expired: the engine asks the catalog again, which no longer has the version
            catalog.fail = NotFound("vm:1.0 (x86_64) not found")
            return httpx.Response(403, text="expired")
        return None

    with pytest.raises(NotFound, match=r"deleted or purged while pulling \(vm:1.0 \(x86_64\) not found\)"):
        _run(tmp_path, catalog, _storage(chunks, storage), index)
    assert _left(tmp_path) == []


def test_catalog_410_mid_pull_says_revoked_and_removes_everything(tmp_path: Path) -> None:
    index, chunks = _pack(6)
    catalog = FakeCatalog()

    def storage(n: int, digest: str) -> httpx.Response | None:
        if n == 2:
            catalog.fail = Gone("vm:1.0 (x86_64) was revoked")
            return httpx.Response(403, text="expired")
        return None

    with pytest.raises(Gone, match=r"^vm:1.0 \(x86_64\) was revoked while pulling; the partial download was removed$"):
        _run(tmp_path, catalog, _storage(chunks, storage), index)
    assert _left(tmp_path) == []


@pytest.mark.parametrize(
    "failure",
    [
        lambda request: httpx.Response(503, text="slow down"),
        lambda request: httpx.Response(500, text="internal"),
    ],
    ids=["503", "500"],
)
def test_5xx_mid_pull_keeps_the_partial_folder_so_a_rerun_resumes(tmp_path: Path, failure: Any) -> None:
    index, chunks = _pack(6)
    broken = [False]

    def storage(n: int, digest: str) -> httpx.Response | None:
        if n >= 4:
            broken[0] = True
        return failure(None) if broken[0] else None

    with pytest.raises(RetriesExceeded):
        _run(tmp_path, FakeCatalog(), _storage(chunks, storage), index)
    final = tmp_path / "dest" / "vm.pvm"
    partial, journal = partial_paths(final)
    assert _left(tmp_path) == sorted([partial.name, journal.name])
    assert len(journal.read_text().split()) == 1 + 3  # the pack digest, then the 3 chunks that arrived

    # storage recovers: the rerun fetches only the other 3 chunks and finishes
    fetched: list[str] = []

    def healthy(n: int, digest: str) -> None:
        fetched.append(digest)

    _run(tmp_path, FakeCatalog(), _storage(chunks, healthy), index)
    assert len(fetched) == 3
    assert _left(tmp_path) == ["vm.pvm"]
    assert (final / "disk.hds").read_bytes() == b"".join(chunks[c.digest] for c in index.chunks())


def test_network_errors_mid_pull_keep_the_partial_folder(tmp_path: Path) -> None:
    index, chunks = _pack(6)

    def storage(n: int, digest: str) -> httpx.Response | None:
        if n >= 3:
            raise httpx.ConnectError("connection refused")
        return None

    with pytest.raises(RetriesExceeded):
        _run(tmp_path, FakeCatalog(), _storage(chunks, storage), index)
    partial, journal = partial_paths(tmp_path / "dest" / "vm.pvm")
    assert partial.is_dir() and journal.is_file()

"""The in-memory fakes (``tests/fakes/memory.py``) pass the same port contract as every adapter, so the
fast service tests (``tests/unit/test_service.py``) ask nothing of the ports a real store would not do.

Plus what only the fakes have: presigned URLs a test can use as a client would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.errors import Forbidden
from core.ports import ApiKeyStore, BlobStore, ManifestStore
from tests.contract.test_ports import ApiKeyStoreContract, BlobStoreContract, ManifestStoreContract
from tests.fakes.memory import MemoryApiKeyStore, MemoryBlobStore, MemoryManifestStore


class TestMemoryManifestStore(ManifestStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[ManifestStore]:
        yield MemoryManifestStore()


class TestMemoryApiKeyStore(ApiKeyStoreContract):
    @pytest.fixture
    def keys(self) -> Iterator[ApiKeyStore]:
        yield MemoryApiKeyStore()


class TestMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self) -> Iterator[BlobStore]:
        yield MemoryBlobStore()

    def test_a_presigned_url_allows_one_method_on_one_key_until_it_expires(self, base: str) -> None:
        now = [1_000_000.0]
        blobs = MemoryBlobStore(clock=lambda: now[0])
        key = f"{base}/staging/x"
        put = blobs.presign(key, "PUT", 60)
        assert blobs.put_url(put, b"payload") == key
        get = blobs.presign(key, "GET", 60)
        assert blobs.get_url(get) == b"payload"
        with pytest.raises(Forbidden):
            blobs.put_url(get, b"overwrite")
        with pytest.raises(Forbidden):
            blobs.get_url(put)
        now[0] += 61
        with pytest.raises(Forbidden):
            blobs.get_url(get)
        assert blobs.get_bytes(key) == b"payload"

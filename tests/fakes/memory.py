"""In-memory fakes of the catalog's ports, for service tests that run in seconds without a server.

They subclass the real ports and pass the same contract suites as every adapter
(``tests/contract/test_ports_memory.py`` runs ``ManifestStoreContract``, ``ApiKeyStoreContract`` and
``BlobStoreContract`` against them), so a service test that passes here asks nothing of the ports
that a real adapter would not do.

- Records are copied in and out (a manifest is stored as its record), so a caller that keeps a
  manifest or an API key record cannot change what is stored by mutating its lists.
- Every conditional write (create, replace with an etag, ``put_if_absent``) runs under one lock:
  the fakes are as atomic as the real stores, and the service's thread pools can use them.
- :class:`MemoryBlobStore` signs nothing: ``presign`` answers a fake ``https://blobs.invalid/…`` URL
  naming the key, the method and the expiry. :meth:`MemoryBlobStore.put_url` and
  :meth:`MemoryBlobStore.get_url` use such a URL as a client would, refusing the wrong method or an
  expired URL, so a test can follow the protocol without touching storage keys itself.
- ``clock`` stands in for the time objects are stamped with (``BlobInfo.modified``), so garbage
  collection's grace periods can be tested without waiting; ``calls`` counts requests per operation.
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge
from core.identity import ManifestKey
from core.manifest import Manifest
from core.ports import (
    ApiKeyRecord,
    ApiKeyStore,
    BlobInfo,
    BlobStore,
    HttpMethod,
    ManifestQuery,
    ManifestStore,
    Stored,
)

__all__ = ["FAKE_URL_ROOT", "MemoryApiKeyStore", "MemoryBlobStore", "MemoryManifestStore", "memory_ports"]

FAKE_URL_ROOT = "https://blobs.invalid/"


def _etag() -> str:
    return uuid.uuid4().hex


# ---- ManifestStore ------------------------------------------------------------------------------


class MemoryManifestStore(ManifestStore):
    """Manifests by key, each with its etag; queries scan and sort (the real stores use indexes)."""

    def __init__(self) -> None:
        self._rows: dict[ManifestKey, tuple[dict[str, Any], str]] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def get(self, key: ManifestKey) -> Stored | None:
        with self._lock:
            self.calls["get"] += 1
            row = self._rows.get(key)
        if row is None:
            return None
        return Stored(Manifest.from_record(dict(row[0])), row[1])

    def create(self, manifest: Manifest) -> str:
        etag = _etag()
        with self._lock:
            self.calls["create"] += 1
            if manifest.key in self._rows:
                raise Conflict(f"{manifest.key} already exists")
            self._rows[manifest.key] = (manifest.to_record(), etag)
        return etag

    def replace(self, manifest: Manifest, etag: str) -> str:
        new_etag = _etag()
        with self._lock:
            self.calls["replace"] += 1
            row = self._rows.get(manifest.key)
            if row is None:
                raise Conflict(f"{manifest.key} no longer exists")
            if row[1] != etag:
                raise Conflict(f"{manifest.key} was changed by someone else; reload and retry")
            self._rows[manifest.key] = (manifest.to_record(), new_etag)
        return new_etag

    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        with self._lock:
            self.calls["delete"] += 1
            row = self._rows.get(key)
            if row is None:
                return
            if etag is not None and row[1] != etag:
                raise Conflict(f"{key} was changed by someone else; reload and retry")
            del self._rows[key]

    def query(self, query: ManifestQuery) -> builtins.list[Manifest]:
        if query.limit < 0:
            raise InvalidInput("limit must not be negative")
        with self._lock:
            self.calls["query"] += 1
            rows = sorted(self._rows.items(), key=lambda item: item[0])
        found: builtins.list[Manifest] = []
        for key, (record, _) in rows:
            if len(found) >= query.limit:
                break
            if query.after is not None and not key > query.after:
                continue
            if query.catalog_id is not None and key.catalog_id != query.catalog_id:
                continue
            if query.architecture is not None and key.architecture != query.architecture:
                continue
            manifest = Manifest.from_record(dict(record))
            if query.tag is not None and query.tag not in manifest.tags:
                continue
            found.append(manifest)
        return found

    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        with self._lock:
            self.calls["record_download"] += 1
            row = self._rows.get(key)
            if row is None:
                raise NotFound(f"{key} does not exist")
            record = dict(row[0])
            record["download_count"] = int(record.get("download_count") or 0) + 1
            record["last_downloaded_at"] = at
            record["last_downloaded_by"] = by
            self._rows[key] = (record, _etag())


# ---- ApiKeyStore --------------------------------------------------------------------------------


class MemoryApiKeyStore(ApiKeyStore):
    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _copy(record: ApiKeyRecord) -> ApiKeyRecord:
        return replace(record, roles=list(record.roles), claims=list(record.claims))

    def create(self, record: ApiKeyRecord) -> None:
        with self._lock:
            if record.key_id in self._records:
                raise Conflict(f"API key {record.key_id} already exists")
            self._records[record.key_id] = self._copy(record)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self._lock:
            record = self._records.get(key_id)
        return None if record is None else self._copy(record)

    def put(self, record: ApiKeyRecord) -> None:
        with self._lock:
            self._records[record.key_id] = self._copy(record)

    def list(self) -> builtins.list[ApiKeyRecord]:
        with self._lock:
            return [self._copy(r) for r in self._records.values()]


# ---- BlobStore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    data: bytes
    modified: float


def _check_key(key: object) -> str:
    """The keys every real store refuses: not text, empty, absolute, or with an empty/dot segment."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\x00" in key:
        raise InvalidInput(f"invalid object key: {str(key)[:80]!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidInput(f"invalid object key: {key[:80]!r}")
    return key


class MemoryBlobStore(BlobStore):
    """Objects in a dict. ``presign`` answers fake URLs that :meth:`put_url` / :meth:`get_url` honour."""

    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._objects: dict[str, _Object] = {}
        self._lock = threading.Lock()
        self.clock = clock
        self.calls: Counter[str] = Counter()

    # -- the port --
    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        _check_key(key)
        if method not in ("GET", "PUT"):
            raise InvalidInput("method must be GET or PUT")
        if not 0 < expires_in <= 7 * 86400:
            raise InvalidInput("expires_in must be from 1 second to 7 days")
        self.calls["presign"] += 1
        expires = int(self.clock()) + expires_in
        return f"{FAKE_URL_ROOT}{quote(key, safe='/')}?method={method}&expires={expires}"

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        with self._lock:
            self.calls["list"] += 1
            found = sorted((k, o) for k, o in self._objects.items() if k.startswith(prefix))
        for key, obj in found:
            yield BlobInfo(key, len(obj.data), obj.modified)

    def head(self, key: str) -> BlobInfo | None:
        with self._lock:
            self.calls["head"] += 1
            obj = self._objects.get(key)
        return None if obj is None else BlobInfo(key, len(obj.data), obj.modified)

    def put_bytes(self, key: str, data: bytes) -> None:
        _check_key(key)
        with self._lock:
            self.calls["put"] += 1
            self._objects[key] = _Object(bytes(data), self.clock())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        _check_key(key)
        with self._lock:
            self.calls["put_if_absent"] += 1
            if key in self._objects:
                return False
            self._objects[key] = _Object(bytes(data), self.clock())
            return True

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        with self._lock:
            self.calls["get"] += 1
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"no object at {key[:200]}")
        if max_bytes is not None and len(obj.data) > max_bytes:
            raise PayloadTooLarge(f"the object at {key[:200]} is larger than {max_bytes} bytes")
        return obj.data

    def delete(self, keys: Iterable[str]) -> None:
        with self._lock:
            self.calls["delete"] += 1
            for key in keys:
                self._objects.pop(key, None)

    # -- what a client does with a presigned URL --
    def _open_url(self, url: str, method: str) -> str:
        parts = urlsplit(url)
        if not url.startswith(FAKE_URL_ROOT):
            raise Forbidden(f"not a URL of this store: {url[:80]}")
        query = parse_qs(parts.query)
        if query.get("method") != [method]:
            raise Forbidden(f"this URL does not allow {method}")
        if int(query.get("expires", ["0"])[0]) < self.clock():
            raise Forbidden("this URL has expired")
        return unquote(parts.path.removeprefix("/"))

    def put_url(self, url: str, data: bytes) -> str:
        """PUT ``data`` through a presigned URL, as a client does; answers the key it wrote."""
        key = self._open_url(url, "PUT")
        self.put_bytes(key, data)
        return key

    def get_url(self, url: str) -> bytes:
        """GET through a presigned URL, as a client does."""
        return self.get_bytes(self._open_url(url, "GET"))

    # -- for assertions --
    def keys(self, prefix: str = "") -> builtins.list[str]:
        with self._lock:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def age(self, seconds: float, prefix: str = "") -> None:
        """Make every object under ``prefix`` ``seconds`` older (garbage collection's grace period)."""
        with self._lock:
            for key, obj in self._objects.items():
                if key.startswith(prefix):
                    self._objects[key] = _Object(obj.data, obj.modified - seconds)


def memory_ports(
    *, clock: Callable[[], float] = time.time
) -> tuple[MemoryManifestStore, MemoryBlobStore, MemoryApiKeyStore]:
    """A fresh set of the three ports."""
    return MemoryManifestStore(), MemoryBlobStore(clock=clock), MemoryApiKeyStore()

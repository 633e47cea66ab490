"""The ports the catalog service depends on. Adapters: SQLite + files (core.local), DynamoDB + S3
(aws_app), Cosmos DB + Blob (azure_app). Every adapter must pass ``tests/contract/test_ports.py``.

Concurrency is optimistic: every stored record carries an opaque ``etag``; a write that names a stale
etag, or a create of an existing key, raises :class:`core.errors.Conflict`. Adapters translate their
SDK's errors into core errors at the boundary; nothing SDK-specific leaks out.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from core.identity import ManifestKey
from core.manifest import Manifest

__all__ = [
    "ApiKeyRecord",
    "ApiKeyStore",
    "BlobInfo",
    "BlobStore",
    "ManifestQuery",
    "ManifestStore",
    "Stored",
    "TakenBlob",
]

HttpMethod = Literal["GET", "PUT"]


@dataclass(frozen=True)
class Stored:
    """A manifest as read from a store, with the etag a conditional write must name."""

    manifest: Manifest
    etag: str


@dataclass(frozen=True)
class ManifestQuery:
    """Filters for :meth:`ManifestStore.query`; results come in ``ManifestKey`` order.

    ``after`` is exclusive: keyset pagination, so a page boundary does not move when other
    manifests are written concurrently.
    """

    catalog_id: str | None = None
    tag: str | None = None
    architecture: str | None = None
    after: ManifestKey | None = None
    limit: int = 100


class ManifestStore(ABC):
    @abstractmethod
    def get(self, key: ManifestKey) -> Stored | None: ...

    @abstractmethod
    def create(self, manifest: Manifest) -> str:
        """Insert if absent and return the etag; :class:`Conflict` if the key exists."""

    @abstractmethod
    def replace(self, manifest: Manifest, etag: str) -> str:
        """Replace if the stored etag still matches; :class:`Conflict` if not (or if gone)."""

    @abstractmethod
    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        """Delete (conditionally when ``etag`` is given). Deleting a missing key is not an error."""

    @abstractmethod
    def query(self, query: ManifestQuery) -> list[Manifest]:
        """Up to ``query.limit`` manifests matching every given filter, in key order."""

    @abstractmethod
    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        """Atomically add one to the download counter and stamp who/when; NotFound if missing."""

    def iter_all(self, catalog_id: str | None = None) -> Iterator[Manifest]:
        """Every manifest (of one catalog), page by page. For purge checks and admin tools only."""
        after: ManifestKey | None = None
        while True:
            page = self.query(ManifestQuery(catalog_id=catalog_id, after=after, limit=500))
            yield from page
            if len(page) < 500:
                return
            after = page[-1].key

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; most adapters have nothing to do."""


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: only the hash of its secret, never the secret."""

    key_id: str
    secret_hash: str
    subject: str
    roles: list[str]
    claims: list[str]
    created_by: str
    created_at: str
    expires_at: str | None = None
    revoked: bool = False
    revoked_at: str | None = None
    revoked_by: str | None = None
    description: str = ""

    def to_public(self) -> dict[str, object]:
        return {
            "id": self.key_id,
            "subject": self.subject,
            "roles": self.roles,
            "claims": self.claims,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "description": self.description,
        }


class ApiKeyStore(ABC):
    @abstractmethod
    def create(self, record: ApiKeyRecord) -> None:
        """Insert; :class:`Conflict` if the id exists."""

    @abstractmethod
    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    def put(self, record: ApiKeyRecord) -> None:
        """Overwrite (revocation). Keys are immutable otherwise, so no etag is needed."""

    @abstractmethod
    def list(self) -> builtins.list[ApiKeyRecord]: ...


@dataclass(frozen=True)
class BlobInfo:
    """One stored object. ``modified`` (epoch seconds) lets garbage collection honour a grace
    period; it is not part of equality, so listings compare by key and size."""

    key: str
    size: int
    modified: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TakenBlob:
    """An object taken out of its client's reach (``BlobStore.taken``): its bytes, and a write-once
    copy of exactly those bytes to another key (True if this call created it). ``data`` may be a view
    of a buffer the store reuses: it is valid only inside the ``with`` block."""

    data: bytes | memoryview
    put_if_absent: Callable[[str], bool]


class BlobStore(ABC):
    """Where VM bytes live. The service only signs URLs and moves small JSON objects (indexes).

    ``name`` identifies the storage in manifests; it is never a credential or connection string.
    """

    name: str = "blobs"
    # Headers a client must send with every PUT to a presigned URL (Azure's Put Blob needs
    # x-ms-blob-type, which a SAS cannot carry). Never a credential: it is handed to every pusher.
    put_headers: Mapping[str, str] = MappingProxyType({})
    # Requests worth having in flight at once when the service fans out small reads (HEADs, marks).
    # A network store answers each after milliseconds of waiting, so many overlap; a local disk
    # answers in microseconds of CPU, where threads only add hand-offs (``core.local.file_blobs``).
    concurrency: int = 16

    @abstractmethod
    def presign(self, key: str, method: HttpMethod, expires_in: int) -> str:
        """A URL that allows exactly ``method`` on exactly ``key`` for ``expires_in`` seconds."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every object under ``prefix`` in key order, paged internally (one request per 1,000 keys).

        The prefix is a plain string prefix, as in S3: ``catalogs/a`` also matches ``catalogs/ab/...``.
        """

    @abstractmethod
    def head(self, key: str) -> BlobInfo | None:
        """Size and modification time of one object (one request); ``None`` when it is missing."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if no object exists at ``key``, atomically (``If-None-Match: *`` on S3
        and Azure, ``O_EXCL``/``link`` on files). True if this call wrote it; False if an object was
        already there, which is never replaced. This is what makes ``chunks/`` write-once."""

    @contextmanager
    def taken(self, key: str, max_bytes: int) -> Iterator[TakenBlob]:
        """``key``'s bytes, read once and out of reach of later writes to ``key`` (a client may PUT a
        staged object again at any moment), to be checked and then copied write-once; the object is
        removed afterwards, whatever happens. ``NotFound`` / ``PayloadTooLarge`` as ``get_bytes``.

        A store that can move an object without rewriting it overrides this (files: a rename, then a
        hard link)."""
        data = self.get_bytes(key, max_bytes)
        try:
            yield TakenBlob(data, lambda final: self.put_if_absent(final, data))
        finally:
            self.delete([key])

    @abstractmethod
    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; :class:`NotFound` when missing; :class:`PayloadTooLarge` when it is
        larger than ``max_bytes`` (read no further than that: a staged object is untrusted)."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects that exist; missing keys are ignored."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; most adapters have nothing to do."""

"""Azure Blob Storage through azure-storage-blob, authorised with the storage account key.

* The account URL is ``https://<account>.blob.core.windows.net`` unless the connection string gives
  ``endpoint`` (sovereign clouds, Azurite's ``http://127.0.0.1:10000/devstoreaccount1``).
* ``put_file`` stages blocks of ``part_size`` (at most ``concurrency`` in memory) and commits them;
  Azure allows 50,000 blocks, so the block size grows for files that would need more.
* ``get_file`` downloads ranges in parallel into a temporary file; ``open_read`` reads sequentially
  and resumes from its offset with an ``If-Match`` on the first ETag after a dropped connection.
* azure-core errors become core errors in :meth:`AzureBlobStorage._errors`; messages carry the
  provider, account, container, key and Azure error code, never the account key or SDK text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from client.byo.common import (
    ResumingReader,
    SdkErrors,
    atomic_destination,
    import_sdk,
    is_listable,
    open_buffered,
    validate_key,
    validate_prefix,
)
from client.byo.connection import AzureStorageConnection
from core.errors import Conflict, Forbidden, NotFound, PayloadTooLarge, PdcatError, Unauthenticated, Unavailable

__all__ = ["AzureBlobStorage"]

_MAX_BLOCKS = 50_000
_MAX_BLOCK = 4000 << 20
_GET_SIZE = 4 << 20  # first and later GETs of a streaming read: what one read may hold in memory
_PROVIDER = AzureStorageConnection.provider


class AzureBlobStorage(SdkErrors):
    """:class:`~client.byo.providers.Storage` over one blob container; the SDK client is made on first use."""

    def __init__(self, conn: AzureStorageConnection, *, part_size: int, concurrency: int) -> None:
        self._conn = conn
        self.description = conn.description
        self._part_size = part_size
        self._concurrency = max(1, concurrency)
        self._clients: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureBlobStorage({self.description})"

    # ---- the SDK ---------------------------------------------------------------------------
    def _container(self, block_size: int | None = None) -> Any:
        """A container client (one per block size: the SDK takes the block size per client)."""
        block = block_size or self._part_size
        with self._lock:
            client = self._clients.get(block)
            if client is None:
                blob = import_sdk("azure.storage.blob", _PROVIDER)
                conn = self._conn
                client = blob.ContainerClient(
                    conn.account_url,
                    conn.container_name,
                    credential={"account_name": conn.storage_account_name, "account_key": conn.storage_account_key},
                    max_block_size=block,
                    max_single_put_size=min(block, 64 << 20),
                    max_single_get_size=_GET_SIZE,
                    max_chunk_get_size=_GET_SIZE,
                    connection_timeout=10,
                    read_timeout=120,
                    retry_total=6,
                )
                self._clients[block] = client
            return client

    def _blob(self, key: str, block_size: int | None = None) -> Any:
        return self._container(block_size).get_blob_client(key)

    def _translate(self, exc: BaseException, op: str, key: str | None) -> PdcatError | None:
        errors = import_sdk("azure.core.exceptions", _PROVIDER)
        what = f"{key!r} in {self.description}" if key else self.description
        if not isinstance(exc, errors.AzureError):
            return None
        raw_code = getattr(exc, "error_code", None) or ""
        code = str(getattr(raw_code, "value", raw_code))  # the SDK may hand back a StorageErrorCode enum
        status = int(getattr(exc, "status_code", None) or 0)
        if isinstance(exc, errors.ResourceNotFoundError) or status == 404:
            if code == "ContainerNotFound":
                return NotFound(f"{self.description} does not exist")
            return NotFound(f"{what} does not exist")
        if isinstance(exc, errors.ClientAuthenticationError) or status in (401, 403):
            # With an account key every operation is allowed, so a refusal means a wrong key, or
            # (AuthorizationFailure on Azure) network rules that keep this machine out.
            if code in ("AuthenticationFailed", "InvalidAuthenticationInfo", "AuthorizationFailure") or status == 401:
                network = " (or the account's network rules)" if code == "AuthorizationFailure" else ""
                return Unauthenticated(
                    f"{_PROVIDER} refused the account key for {self.description} ({code or status}): "
                    f"check storage_account_key{network}"
                )
            return Forbidden(f"{_PROVIDER} denied {op} on {self.description} ({code or status})")
        if isinstance(exc, errors.ResourceModifiedError) or status == 412:
            return Conflict(f"{what} changed while it was being read")
        if isinstance(exc, errors.ServiceRequestError | errors.ServiceResponseError | errors.IncompleteReadError):
            return Unavailable(f"{_PROVIDER}: cannot reach {self.description} ({type(exc).__name__})")
        if status >= 500 or status == 429:
            return Unavailable(f"{_PROVIDER} kept failing during {op} of {what} ({code or status})")
        return PdcatError(f"{_PROVIDER} {op} of {what} failed ({code or status or type(exc).__name__})")

    # ---- Storage ---------------------------------------------------------------------------
    def put_file(self, key: str, path: Path) -> None:
        key = validate_key(key)
        size = path.stat().st_size
        block = max(self._part_size, -(-size // _MAX_BLOCKS))
        if block > _MAX_BLOCK:
            raise PayloadTooLarge(f"{path.name} is too large for one Azure blob ({size} bytes)")
        with self._errors("upload", key), path.open("rb") as source:
            self._blob(key, block).upload_blob(source, length=size, overwrite=True, max_concurrency=self._concurrency)

    def get_file(self, key: str, dest: Path) -> None:
        key = validate_key(key)
        with self._errors("download", key):
            downloader = self._blob(key).download_blob(max_concurrency=self._concurrency)
            with atomic_destination(dest) as tmp, tmp.open("wb") as sink:
                downloader.readinto(sink)

    def open_read(self, key: str) -> BinaryIO:
        key = validate_key(key)
        errors = import_sdk("azure.core.exceptions", _PROVIDER)
        core = import_sdk("azure.core", _PROVIDER)
        state: dict[str, Any] = {}

        def open_at(offset: int) -> Any:
            options: dict[str, Any] = {"max_concurrency": 1}
            if "etag" in state:
                options.update(etag=state["etag"], match_condition=core.MatchConditions.IfNotModified)
            with self._errors("read", key):
                downloader = self._blob(key).download_blob(offset=offset or None, **options)
            if "etag" not in state:
                state["etag"] = downloader.properties.etag
                state["size"] = int(downloader.properties.size)
            return _Downloaded(downloader)

        raw = ResumingReader(
            open_at,
            what=f"{key!r} in {self.description}",
            size=lambda: state.get("size"),
            transient=(errors.ServiceResponseError, errors.IncompleteReadError, ConnectionError),
        )
        return open_buffered(raw)

    def put_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        with self._errors("upload", key):
            self._blob(key).upload_blob(data, overwrite=True)

    def get_bytes(self, key: str) -> bytes:
        key = validate_key(key)
        with self._errors("download", key):
            return bytes(self._blob(key).download_blob(max_concurrency=self._concurrency).readall())

    def size(self, key: str) -> int | None:
        key = validate_key(key)
        try:
            with self._errors("look-up", key):
                return int(self._blob(key).get_blob_properties().size)
        except NotFound as exc:
            if _container_missing(exc):
                raise
            return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._list(validate_prefix(prefix))

    def _list(self, prefix: str) -> Iterator[str]:
        with self._errors("list"):
            for item in self._container().list_blobs(name_starts_with=prefix or None):
                if is_listable(item.name):
                    yield item.name

    def delete(self, key: str) -> None:
        key = validate_key(key)
        try:
            with self._errors("delete", key):
                self._blob(key).delete_blob(delete_snapshots="include")
        except NotFound as exc:
            if _container_missing(exc):
                raise
            # the blob is already gone: a clean-up wants exactly that

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _container_missing(exc: NotFound) -> bool:
    return getattr(exc.__cause__, "error_code", None) == "ContainerNotFound"


class _Downloaded:
    """A ``StorageStreamDownloader`` as a :class:`~client.byo.common.Body` (it has no ``close``)."""

    def __init__(self, downloader: Any) -> None:
        self._downloader = downloader

    def read(self, size: int = -1, /) -> bytes:
        return bytes(self._downloader.read(size))

    def close(self) -> None:
        self._downloader = None

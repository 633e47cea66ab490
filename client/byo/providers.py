"""The :class:`Storage` the client reads and writes original-format packs through, and its factory.

One small interface over five places (AWS S3, MinIO or any S3-compatible server, Azure Blob Storage,
JFrog Artifactory, a local folder), shaped for the original pack format: a few whole files per VM,
20-150 GB each. So every method streams: ``put_file`` uploads in parts (S3 multipart, Azure blocks,
one streamed PUT to Artifactory), ``get_file`` downloads to a temporary file next to the destination
and renames it when complete, and ``open_read`` is a stream for unpacking while downloading.

Errors are the core ones, with one-line messages that name the provider and never a secret:
``NotFound`` (missing key, bucket or container), ``Unauthenticated`` (credentials refused),
``Forbidden`` (credentials accepted, action denied), ``Unavailable`` (unreachable or kept failing
after retries), ``Conflict`` (the object changed while it was read, or Artifactory refused a
checksum), ``InvalidInput`` (a key that is not a relative ``/``-separated path), and
:class:`~client.byo.common.MissingExtra` (the provider's SDK is not installed).

``delete`` of a key that is not there succeeds (S3 cannot tell the difference without an extra
request, and a clean-up wants exactly that). ``list`` yields keys in sorted order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from client.byo.common import MissingExtra
from client.byo.connection import (
    ArtifactoryConnection,
    AwsS3Connection,
    AzureStorageConnection,
    ConnectionString,
    LocalConnection,
    MinioConnection,
)

__all__ = ["DEFAULT_PART_SIZE", "MissingExtra", "Storage", "open_storage"]

DEFAULT_PART_SIZE = 64 << 20  # S3 part / Azure block: 150 GB is ~2,400 parts (S3 allows 10,000)


@runtime_checkable
class Storage(Protocol):
    """A bucket-like place holding whole files under ``/``-separated keys."""

    description: str  # e.g. "aws-s3 bucket 'vms'": for messages, never holds a secret

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file, streaming (multipart for big files); replaces what was there."""

    def get_file(self, key: str, dest: Path) -> None:
        """Download to a temporary file next to ``dest`` and rename it to ``dest`` when complete."""

    def open_read(self, key: str) -> BinaryIO:
        """A read-only stream of the object (resumes after dropped connections); close it when done."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (metadata) in one request."""

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes, ``None`` if there is no such key."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with ``prefix`` (a plain string prefix, not only a folder), sorted."""

    def delete(self, key: str) -> None:
        """Remove the object; a key that is not there is fine."""

    def close(self) -> None:
        """Release connections."""


def open_storage(conn: ConnectionString, *, part_size: int = DEFAULT_PART_SIZE, concurrency: int = 4) -> Storage:
    """The store a parsed connection string points at. Nothing is contacted until the first call.

    ``part_size`` is the S3 multipart part / Azure block size (bigger files get bigger parts when
    needed to stay under the provider's part-count limit); ``concurrency`` the parallel parts per file.
    """
    if part_size < 5 << 20:
        raise ValueError("part_size must be at least 5 MiB (the S3 minimum)")
    if isinstance(conn, AwsS3Connection | MinioConnection):
        from client.byo.s3 import S3Storage

        return S3Storage(conn, part_size=part_size, concurrency=concurrency)
    if isinstance(conn, AzureStorageConnection):
        from client.byo.azure_blob import AzureBlobStorage

        return AzureBlobStorage(conn, part_size=part_size, concurrency=concurrency)
    if isinstance(conn, ArtifactoryConnection):
        from client.byo.artifactory import ArtifactoryStorage

        return ArtifactoryStorage(conn)
    if isinstance(conn, LocalConnection):
        from client.byo.local import LocalStorage

        return LocalStorage(conn)
    raise TypeError(f"no storage for {type(conn).__name__}")

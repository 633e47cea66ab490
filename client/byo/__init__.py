"""Bring-your-own storage: the original product's connection strings and the stores behind them.

Users who hold their own bucket credentials give pdcat a connection string (``provider=aws-s3;...``);
:func:`parse_connection_string` checks it strictly and :func:`open_storage` returns a
:class:`Storage` that moves whole files (packs of 20-150 GB) without holding them in memory.
Cloud SDKs are imported on first use only, and the stores themselves (``providers``, which loads
httpx) when first named, so ``import client.byo.connection`` (the PDFile parser's) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from client.byo.connection import (
    ArtifactoryConnection,
    AwsS3Connection,
    AzureStorageConnection,
    ConnectionString,
    ConnectionStringError,
    LocalConnection,
    MinioConnection,
    connection_from_pairs,
    parse_connection_string,
)

if TYPE_CHECKING:
    from client.byo.providers import MissingExtra, Storage, open_storage

__all__ = [
    "ArtifactoryConnection",
    "AwsS3Connection",
    "AzureStorageConnection",
    "ConnectionString",
    "ConnectionStringError",
    "LocalConnection",
    "MinioConnection",
    "MissingExtra",
    "Storage",
    "connection_from_pairs",
    "open_storage",
    "parse_connection_string",
]


def __getattr__(name: str) -> Any:
    if name in ("MissingExtra", "Storage", "open_storage"):
        from client.byo import providers

        return getattr(providers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

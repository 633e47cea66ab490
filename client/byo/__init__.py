"""Bring-your-own storage: the original product's connection strings and the stores behind them.

Users who hold their own bucket credentials give pdcat a connection string (``provider=aws-s3;...``);
:func:`parse_connection_string` checks it strictly and :func:`open_storage` returns a
:class:`Storage` that moves whole files (packs of 20-150 GB) without holding them in memory.
Cloud SDKs are imported on first use only, so ``import client.byo`` stays cheap.
"""

from __future__ import annotations

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

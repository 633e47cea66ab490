"""The bodies of the push, pull, verify and gc routes (storage protocol v2), declared once.

The service builds these, the OpenAPI document describes them (``SCHEMAS``) and the client reads
them. Every body is bounded by a page size, whatever the VM size (docs/adr-002-storage-protocol-v2.md):
the index itself never travels through the API.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = [
    "CHUNK_PAGE",
    "MAX_INDEX_BYTES",
    "REPORT_PAGE",
    "SCHEMAS",
    "VERIFY_PAGE",
    "ChunksAnswer",
    "GcAnswer",
    "PackAnswer",
    "PullAnswer",
    "PullChunksAnswer",
    "PullPdpackAnswer",
    "PushAnswer",
    "ReportAnswer",
    "UrlsAnswer",
    "VerifyAnswer",
]

CHUNK_PAGE = 500  # digests per chunks / pull-urls question: 500 presigned URLs stay far under 1 MiB
VERIFY_PAGE = 32  # chunks the server reads, decompresses and hashes per verify request (fits 29 s)
REPORT_PAGE = 16  # corrupt-chunk reports per request
MAX_INDEX_BYTES = 256 * 1024 * 1024  # a committed index is read from storage, never larger than this


class PushAnswer(TypedDict):
    """``POST …/push``: a session and where to put its index."""

    upload_id: str
    catalog_id: str
    version: str
    architecture: str
    index_url: str
    put_headers: dict[str, str]
    expires_at: str


class ChunksAnswer(TypedDict):
    """``POST /uploads/{id}/chunks``: which of the asked digests are already verified, and staging
    PUT URLs for the others."""

    stored: list[str]
    urls: dict[str, str]
    put_headers: dict[str, str]
    expires_at: str


class VerifyAnswer(TypedDict):
    """``POST /uploads/{id}/verify``: the server's verdict on staged chunks."""

    verified: list[str]
    missing: list[str]
    corrupt: list[str]


class PullChunksAnswer(TypedDict):
    format: Literal["chunks"]
    manifest: dict[str, Any]
    index_url: str
    expires_at: str


class PackAnswer(TypedDict):
    format: Literal["pdpack"]
    url: str
    size: int
    checksum: str
    checksum_algorithm: str | None
    compressed: bool


class PullPdpackAnswer(TypedDict):
    format: Literal["pdpack"]
    manifest: dict[str, Any]
    pack: PackAnswer
    expires_at: str


PullAnswer = PullChunksAnswer | PullPdpackAnswer


class UrlsAnswer(TypedDict):
    urls: dict[str, str]
    expires_at: str


class ReportAnswer(TypedDict):
    quarantined: list[str]
    intact: list[str]


class GcAnswer(TypedDict):
    dry_run: bool
    catalogs: int
    chunks_deleted: int
    chunk_bytes_deleted: int
    staged_deleted: int
    staged_bytes_deleted: int
    sessions_aborted: int
    next_cursor: str | None


_STR = {"type": "string"}
_INT = {"type": "integer"}
_DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_DIGESTS = {"type": "array", "items": _DIGEST}
_URLS = {"type": "object", "additionalProperties": {"type": "string"}}
_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _digest_page(limit: int) -> dict[str, Any]:
    return _obj({"digests": {**_DIGESTS, "maxItems": limit}})


SCHEMAS: dict[str, dict[str, Any]] = {
    "PushRequest": _obj(
        {"index_digest": _DIGEST, "index_size": _INT, "chunk_size": _INT},
        {
            "force": {"type": "boolean"},
            "description": _STR,
            "tags": {"type": "array", "items": _STR},
            "required_roles": {"type": "array", "items": _STR},
            "required_claims": {"type": "array", "items": _STR},
            "minimum_requirements": {"type": "object"},
            "vm_type": {"type": "string", "enum": ["pvm", "macvm"]},
        },
    ),
    "PushAnswer": _obj(
        {
            "upload_id": _STR,
            "catalog_id": _STR,
            "version": _STR,
            "architecture": _STR,
            "index_url": _STR,
            "put_headers": _HEADERS,
            "expires_at": _STR,
        }
    ),
    "ChunksRequest": _digest_page(CHUNK_PAGE),
    "ChunksAnswer": _obj({"stored": _DIGESTS, "urls": _URLS, "put_headers": _HEADERS, "expires_at": _STR}),
    "VerifyRequest": _digest_page(VERIFY_PAGE),
    "VerifyAnswer": _obj({"verified": _DIGESTS, "missing": _DIGESTS, "corrupt": _DIGESTS}),
    "PullAnswer": {
        "type": "object",
        "required": ["format", "manifest", "expires_at"],
        "properties": {
            "format": {"type": "string", "enum": ["chunks", "pdpack"]},
            "manifest": {"type": "object"},
            "index_url": {**_STR, "description": "format 'chunks': presigned GET of the index"},
            "pack": {"type": "object", "description": "format 'pdpack': one presigned GET of the pack"},
            "expires_at": _STR,
        },
    },
    "UrlsRequest": _digest_page(CHUNK_PAGE),
    "UrlsAnswer": _obj({"urls": _URLS, "expires_at": _STR}, {"pack": {"type": "object"}}),
    "ReportRequest": _digest_page(REPORT_PAGE),
    "ReportAnswer": _obj({"quarantined": _DIGESTS, "intact": _DIGESTS}),
    "GcRequest": {
        "type": "object",
        "properties": {
            "dry_run": {"type": "boolean"},
            "cursor": {"type": ["string", "null"]},
            "grace_seconds": {"type": "number", "minimum": 0},
        },
    },
    "GcAnswer": _obj(
        {
            "dry_run": {"type": "boolean"},
            "catalogs": _INT,
            "chunks_deleted": _INT,
            "chunk_bytes_deleted": _INT,
            "staged_deleted": _INT,
            "staged_bytes_deleted": _INT,
            "sessions_aborted": _INT,
            "next_cursor": {"type": ["string", "null"]},
        }
    ),
}

"""The bodies of the push, pull, verify and gc routes (storage protocol v2), declared once.

The service builds these, the OpenAPI document describes them (``SCHEMAS``) and the client reads
them. Every body is bounded by a page size, whatever the VM size (docs/adr-002-storage-protocol-v2.md):
the index itself never travels through the API.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = [
    "ARCHITECTURE_PATTERN",
    "CATALOG_ID_PATTERN",
    "CHUNK_PAGE",
    "DIGEST_PATTERN",
    "GC_CURSOR_PATTERN",
    "LATEST_PATTERN",
    "MAX_API_KEY_DAYS",
    "MAX_CHUNK_SIZE",
    "MAX_DESCRIPTION",
    "MAX_INDEX_BYTES",
    "MAX_LIST_FIELD",
    "MAX_LIST_LIMIT",
    "MIN_CHUNK_SIZE",
    "REPORT_PAGE",
    "ROLE_PATTERN",
    "SCHEMAS",
    "SERVICE_ACCOUNT_PATTERN",
    "TAG_PATTERN",
    "VERIFY_PAGE",
    "VERSION_PATTERN",
    "ChunksAnswer",
    "GcAnswer",
    "IndexAnswer",
    "PackAnswer",
    "PullAnswer",
    "PullChunksAnswer",
    "PullPdpackAnswer",
    "PushAnswer",
    "ReportAnswer",
    "UrlsAnswer",
    "VerifyAnswer",
    "ref",
]

CHUNK_PAGE = 500  # digests per chunks / pull-urls question: 500 presigned URLs stay far under 1 MiB
VERIFY_PAGE = 32  # chunks the server reads, decompresses and hashes per verify request (fits 29 s)
REPORT_PAGE = 16  # corrupt-chunk reports per request
MAX_INDEX_BYTES = 256 * 1024 * 1024  # a committed index is read from storage, never larger than this


class BaseAnswer(TypedDict):
    """The version an incremental (format-2 or 3) push builds on, and a GET URL of its index."""

    version: str
    pack_digest: str
    index_url: str


class PushAnswer(TypedDict):
    """``POST …/push``: a session, its index format, and for a format-2 or 3 push the version it may
    build on."""

    upload_id: str
    catalog_id: str
    version: str
    architecture: str
    put_headers: dict[str, str]
    expires_at: str
    format: int
    base: BaseAnswer | None


class IndexAnswer(TypedDict):
    """``POST /uploads/{id}/index``: where to PUT the index just declared."""

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


# ---- JSON Schemas of every body the API reads or answers (the OpenAPI document's components) ------
# Each schema accepts exactly what the server accepts, as far as JSON Schema can say it: a request that
# matches it is never refused as invalid input (400), and additionalProperties is false wherever the
# server refuses unknown fields. Identifier patterns are those of core.identity (case-insensitive where
# the server folds case). Answers list every field they carry and no other.

MAX_API_KEY_DAYS = 366  # core.service.ServiceSettings.max_api_key_days
MAX_DESCRIPTION = 4096  # core.manifest.MAX_DESCRIPTION
MAX_LIST_FIELD = 64  # core.manifest.MAX_LIST_FIELD: tags, required roles, required claims
MIN_CHUNK_SIZE = 4096  # core.pack.MIN_CHUNK_SIZE
MAX_CHUNK_SIZE = 64 * 1024 * 1024  # core.pack.MAX_CHUNK_SIZE
PACK_FORMATS = (1, 2, 3)  # core.pack.PACK_FORMATS
BLOCK_SIZES = (65536, 131072, 262144, 524288, 1048576)  # core.pack.BLOCK_SIZES
DEFAULT_BLOCK_SIZE = 131072  # core.pack.DEFAULT_BLOCK_SIZE
MAX_LIST_LIMIT = 1000  # GET /catalog?limit=

# core.identity, written for the raw value the server receives (it folds case before matching)
CATALOG_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
LATEST_PATTERN = r"^[Ll][Aa][Tt][Ee][Ss][Tt]$"
ARCHITECTURE_PATTERN = r"^([Xx]86_64|[Aa][Mm][Dd]64|[Xx]64|[Aa][Rr][Mm]64|[Aa][Aa][Rr][Cc][Hh]64|[Aa][Rr][Mm])$"
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"
ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # core.users
MIN_PASSWORD = 12  # core.users.MIN_PASSWORD
BUILT_IN_ROLES = ("USER", "PUBLISHER", "ADMIN", "SUPER_USER")  # core.rbac.Role
ALL_CLAIM_NAMES = (  # core.rbac.Claim
    "LIST_CATALOG_MANIFEST",
    "PULL_CATALOG_MANIFEST",
    "PUSH_CATALOG_MANIFEST",
    "UPDATE_CATALOG_MANIFEST",
    "DELETE_CATALOG_MANIFEST",
    "TAINT_CATALOG_MANIFEST",
    "REVOKE_CATALOG_MANIFEST",
    "IMPORT_CATALOG_MANIFEST",
    "MANAGE_API_KEYS",
)
DIGEST_PATTERN = r"^[0-9a-f]{64}$"
SERVICE_ACCOUNT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # enforced by core.api_keys
GC_CURSOR_PATTERN = r"^(c:[0-9a-f]{32}|s:([A-Za-z0-9_-]{8,64})?)?$"


def ref(name: str) -> dict[str, str]:
    """A reference to one of :data:`SCHEMAS` from anywhere in the OpenAPI document."""
    return {"$ref": f"#/components/schemas/{name}"}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_COUNT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_NULLABLE_STR = {"type": ["string", "null"]}
_ANY: dict[str, Any] = {}
_DIGEST = {"type": "string", "pattern": DIGEST_PATTERN}
_DIGESTS = {"type": "array", "items": _DIGEST}
_URLS = {"type": "object", "additionalProperties": {"type": "string"}}
_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}
_STRINGS = {"type": "array", "items": _STR}
_TAGS_IN = {"type": "array", "maxItems": MAX_LIST_FIELD, "items": ref("Tag")}
_ROLES_IN = {"type": "array", "maxItems": MAX_LIST_FIELD, "items": ref("RoleName")}
_ROLE_NAMES = {"type": "array", "items": {"enum": list(BUILT_IN_ROLES)}}
_CLAIM_NAMES = {"type": "array", "items": {"enum": list(ALL_CLAIM_NAMES)}}
_PASSWORD_IN = {"type": "string", "minLength": MIN_PASSWORD, "maxLength": 1024}
_DESCRIPTION_IN = {"type": "string", "maxLength": MAX_DESCRIPTION}
_VM_TYPE = {"type": "string", "enum": ["pvm", "macvm"]}
_ARCH_OUT = {"type": "string", "enum": ["x86_64", "arm64"]}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None, *, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _format_two_rules() -> list[dict[str, Any]]:
    """What a push's body says about its index format, as JSON Schema: ``block_size`` and ``base``
    only with format 2 or 3, and a chunk_size its block size divides (the default one when none is given)."""
    format_two = {"properties": {"format": {"enum": [2, 3]}}, "required": ["format"]}
    rules: list[dict[str, Any]] = [
        {"if": format_two, "else": {"not": {"anyOf": [{"required": ["block_size"]}, {"required": ["base"]}]}}},
        {
            "if": {"allOf": [format_two, {"not": {"required": ["block_size"]}}]},
            "then": {"properties": {"chunk_size": {"multipleOf": DEFAULT_BLOCK_SIZE}}},
        },
    ]
    for size in BLOCK_SIZES:
        rules.append(
            {
                "if": {"properties": {"block_size": {"const": size}}, "required": ["block_size"]},
                "then": {"properties": {"chunk_size": {"multipleOf": size}}},
            }
        )
    return rules


def _digest_page(limit: int) -> dict[str, Any]:
    """``{"digests": [...]}``: 1 to ``limit`` sha256 digests; other fields are ignored."""
    return _obj({"digests": {**_DIGESTS, "minItems": 1, "maxItems": limit}}, closed=False)


def _list_edit(name: str, items: dict[str, Any]) -> dict[str, Any]:
    """``{"<name>": [...]}`` for the tag, role and claim editors; other fields are ignored."""
    return _obj({name: items}, closed=False)


# The metadata a push, an import or PUT …/metadata may set (core.service.parse_metadata); null leaves a
# list or the requirements as they are. (The server also takes ``roles`` and ``claims`` as aliases of
# ``required_roles`` and ``required_claims``, for older clients: not part of the contract.)
_METADATA_IN: dict[str, Any] = {
    "description": _DESCRIPTION_IN,
    "tags": _TAGS_IN,
    "required_roles": {"anyOf": [_ROLES_IN, {"type": "null"}]},
    "required_claims": {"anyOf": [_ROLES_IN, {"type": "null"}]},
    "minimum_requirements": {"anyOf": [ref("MinimumRequirementsInput"), {"type": "null"}]},
    "vm_type": _VM_TYPE,
}

_PACK_CHUNKS = _obj(
    {
        "digest": {"type": "string", "description": "sha256 of the index; empty until a push is committed"},
        "format": {"type": "integer", "description": "the index format version"},
        "chunk_size": _COUNT,
        "chunk_count": _COUNT,
        "file_count": _COUNT,
    }
)
_PACK_PDPACK = _obj(
    {
        "format": {"const": "pdpack"},
        "file_count": _COUNT,
        "key": _STR,
        "meta_key": _STR,
        "pack_size": _COUNT,
        "compressed_checksum": _STR,
        "is_compressed": _BOOL,
    }
)

_API_KEY: dict[str, Any] = {
    "id": _STR,
    "subject": _STR,
    "roles": _STRINGS,
    "claims": _STRINGS,
    "created_by": _STR,
    "created_at": _STR,
    "expires_at": _STR,
    "revoked": _BOOL,
    "revoked_at": _NULLABLE_STR,
    "revoked_by": _NULLABLE_STR,
    "description": _STR,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "code": {
                        "type": "string",
                        "description": "stable machine code: invalid_input, unauthenticated, forbidden, not_found, "
                        "method_not_allowed, conflict, tainted, revoked, payload_too_large, unprocessable, "
                        "too_many_requests, unavailable, internal",
                    },
                    "message": _STR,
                }
            )
        }
    ),
    # ---- identifiers (core.identity) ----
    "CatalogId": {
        "type": "string",
        "pattern": CATALOG_ID_PATTERN,
        "not": {"pattern": "^[Ii][Mm][Pp][Oo][Rr][Tt]$"},
        "description": "1-128 of a-z 0-9 . _ -, starting with a letter or digit; case-insensitive; "
        "'import' is reserved",
    },
    "Version": {
        "type": "string",
        "pattern": VERSION_PATTERN,
        "not": {"pattern": LATEST_PATTERN},
        "description": "1-128 of A-Z a-z 0-9 . _ + -, starting with a letter or digit; not 'latest'",
    },
    "VersionOrLatest": {
        "type": "string",
        "pattern": VERSION_PATTERN,
        "description": "a version, or 'latest': the newest usable version",
    },
    "Architecture": {
        "type": "string",
        "pattern": ARCHITECTURE_PATTERN,
        "description": "x86_64 (amd64, x64) or arm64 (aarch64, arm), case-insensitive",
    },
    "Tag": {"type": "string", "pattern": TAG_PATTERN, "description": "1-64 of a-z 0-9 . _ : + -; case-insensitive"},
    "RoleName": {
        "type": "string",
        "pattern": ROLE_PATTERN,
        "description": "a role or claim: 1-128 of A-Z 0-9 _ . : -; case-insensitive",
    },
    "MinimumRequirementsInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "cpu": {"type": "integer", "minimum": 0, "maximum": 4096},
            "memory_mb": {"type": "integer", "minimum": 0, "maximum": 2**40},
            "disk_mb": {"type": "integer", "minimum": 0, "maximum": 2**40},
        },
    },
    # ---- meta and auth ----
    "Health": _obj({"status": {"const": "ok"}}),
    "OpenApiDocument": _obj({"openapi": _STR, "info": {"type": "object"}, "paths": {"type": "object"}}, closed=False),
    "TokenRequest": _obj({"username": _STR, "password": _STR}, closed=False),
    "TokenAnswer": _obj({"token": _STR, "expires_at": _STR}),
    "Whoami": _obj(
        {
            "subject": _STR,
            "roles": _STRINGS,
            "claims": _STRINGS,
            "via": {"type": "string", "enum": ["token", "api_key"]},
        }
    ),
    # ---- the embedded server's users (core.users) ----
    "UserRequest": _obj(
        {"username": {"type": "string", "pattern": USERNAME_PATTERN}, "password": _PASSWORD_IN},
        {"roles": _ROLE_NAMES, "claims": _CLAIM_NAMES},
    ),
    "UserRolesRequest": _obj({}, {"roles": _ROLE_NAMES, "claims": _CLAIM_NAMES}),
    "PasswordRequest": _obj(
        {"password": _PASSWORD_IN},
        {"current_password": {"type": "string", "description": "required to change your own password"}},
    ),
    "User": _obj({"username": _STR, "roles": _STRINGS, "claims": _STRINGS, "created_at": _STR}),
    "UserList": _obj({"items": {"type": "array", "items": ref("User")}}),
    "ApiKeyRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "service_account": {
                "type": ["string", "null"],
                "pattern": SERVICE_ACCOUNT_PATTERN,
                "description": "the key acts as svc:<creator>/<name>; without it, as its creator",
            },
            "roles": _ROLES_IN,
            "claims": _ROLES_IN,
            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": MAX_API_KEY_DAYS, "default": 90},
            "description": _DESCRIPTION_IN,
        },
    },
    "ApiKey": _obj(_API_KEY),
    "ApiKeyCreated": _obj({**_API_KEY, "key": {"type": "string", "description": "the key itself, shown only once"}}),
    "ApiKeyList": _obj({"items": {"type": "array", "items": ref("ApiKey")}}),
    # ---- manifests ----
    "Manifest": _obj(
        {
            "catalog_id": _STR,
            "version": _STR,
            "architecture": _ARCH_OUT,
            "id": _STR,
            "description": _STR,
            "tags": _STRINGS,
            "vm_type": _VM_TYPE,
            "size": _COUNT,
            "stored_size": _COUNT,
            "pack": {"oneOf": [_PACK_CHUNKS, _PACK_PDPACK]},
            "required_roles": _STRINGS,
            "required_claims": _STRINGS,
            "minimum_requirements": _obj({"cpu": _COUNT, "memory_mb": _COUNT, "disk_mb": _COUNT}),
            "tainted": _BOOL,
            "tainted_by": _NULLABLE_STR,
            "tainted_at": _NULLABLE_STR,
            "untainted_by": _NULLABLE_STR,
            "untainted_at": _NULLABLE_STR,
            "revoked": _BOOL,
            "revoked_by": _NULLABLE_STR,
            "revoked_at": _NULLABLE_STR,
            "created_at": _STR,
            "created_by": _STR,
            "updated_at": _STR,
            "pushed_at": _NULLABLE_STR,
            "download_count": _COUNT,
            "last_downloaded_at": _NULLABLE_STR,
            "last_downloaded_by": _NULLABLE_STR,
            "status": {"type": "string", "enum": ["uploading", "ready", "deleted"]},
            "deleted_at": _NULLABLE_STR,
            "deleted_by": _NULLABLE_STR,
            "upload_in_progress": _BOOL,
            "storage": _obj({"name": _STR, "prefix": _STR}),
            "usable": {**_BOOL, "description": "pullable: committed, not tainted, not revoked"},
        }
    ),
    "ManifestList": _obj({"items": {"type": "array", "items": ref("Manifest")}}),
    "ManifestPage": _obj(
        {
            "items": {"type": "array", "items": ref("Manifest")},
            "next_cursor": {**_NULLABLE_STR, "description": "pass back as ?cursor= for the next page; null: done"},
        }
    ),
    "MetadataRequest": {"type": "object", "additionalProperties": False, "properties": _METADATA_IN},
    "TagsRequest": _list_edit("tags", _TAGS_IN),
    "RolesRequest": _list_edit("roles", _ROLES_IN),
    "ClaimsRequest": _list_edit("claims", _ROLES_IN),
    "ImportRequest": _obj(
        {"catalog_id": ref("CatalogId"), "version": ref("Version"), "architecture": ref("Architecture")},
        {
            "format": {
                "type": "string",
                "enum": ["pdcat", "pdpack"],
                "default": "pdcat",
                "description": "pdcat: an index and chunks already in storage. pdpack: the original product's "
                "<catalog_id>/<name>.pdpack and <name>.meta (name = NormalizeString('<id>-<arch>-<version>')); "
                "metadata not given here comes from the .meta",
            },
            **_METADATA_IN,
        },
    ),
    # ---- push (storage protocol v2) ----
    "PushRequest": _obj(
        {
            "chunk_size": {
                "type": "integer",
                "minimum": MIN_CHUNK_SIZE,
                "maximum": MAX_CHUNK_SIZE,
                "multipleOf": MIN_CHUNK_SIZE,
            },
        },
        {
            "force": _BOOL,
            "format": {
                "enum": list(PACK_FORMATS),
                "description": "the index format the push will commit: 1 (grid chunks, the default), 2 "
                "(extents over block-verified objects, incremental: docs/adr-004-incremental-chunking.md) or 3 "
                "(format 2 named with BLAKE3: docs/adr-005-blake3-object-names.md)",
            },
            "block_size": {
                "enum": list(BLOCK_SIZES),
                "description": f"formats 2 and 3: the block grid (default {DEFAULT_BLOCK_SIZE}); divides chunk_size",
            },
            "base": {
                "type": "string",
                "pattern": VERSION_PATTERN,
                "not": {"pattern": LATEST_PATTERN},
                "description": "formats 2 and 3: the version to build on (default: the newest usable one)",
            },
            **_METADATA_IN,
        },
    )
    | {"allOf": _format_two_rules()},
    "PushAnswer": _obj(
        {
            "upload_id": _STR,
            "catalog_id": _STR,
            "version": _STR,
            "architecture": _ARCH_OUT,
            "put_headers": _HEADERS,
            "expires_at": _STR,
            "format": {
                "enum": list(PACK_FORMATS),
                "description": "the index format the session commits: the one asked for, except that a format-3 "
                "push whose base is a format-2 version is a format-2 push (the series keeps deduplicating)",
            },
            "base": {
                "anyOf": [
                    _obj({"version": _STR, "pack_digest": _DIGEST, "index_url": _STR}),
                    {"type": "null"},
                ],
                "description": "formats 2 and 3: the newest usable version of this id, architecture and grid in "
                "format 2 or (for a format-3 push) 3 (or the one named, if it is one), offered only to a pusher who "
                "sees every version of the id; null otherwise",
            },
        }
    ),
    "IndexRequest": _obj(
        {"index_digest": _DIGEST, "index_size": {"type": "integer", "minimum": 1, "maximum": MAX_INDEX_BYTES}}
    ),
    "IndexAnswer": _obj({"index_url": _STR, "put_headers": _HEADERS, "expires_at": _STR}),
    "ChunksRequest": _digest_page(CHUNK_PAGE),
    "ChunksAnswer": _obj({"stored": _DIGESTS, "urls": _URLS, "put_headers": _HEADERS, "expires_at": _STR}),
    "VerifyRequest": _digest_page(VERIFY_PAGE),
    "VerifyAnswer": _obj({"verified": _DIGESTS, "missing": _DIGESTS, "corrupt": _DIGESTS}),
    "CommitRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "optional and empty: metadata is set when the push begins",
        "properties": {},
    },
    # ---- pull ----
    "PackAnswer": _obj(
        {
            "format": {"const": "pdpack"},
            "url": _STR,
            "size": _COUNT,
            "checksum": _STR,
            "checksum_algorithm": {"type": ["string", "null"], "enum": ["md5", "sha1", "sha256", None]},
            "compressed": _BOOL,
        }
    ),
    "PullAnswer": {
        "type": "object",
        "required": ["format", "manifest", "expires_at"],
        "additionalProperties": False,
        "properties": {
            "format": {"type": "string", "enum": ["chunks", "pdpack"]},
            "manifest": ref("Manifest"),
            "index_url": {**_STR, "description": "format 'chunks': presigned GET of the index"},
            "pack": {**ref("PackAnswer"), "description": "format 'pdpack': one presigned GET of the pack"},
            "expires_at": _STR,
        },
        "oneOf": [
            {"properties": {"format": {"const": "chunks"}}, "required": ["index_url"], "not": {"required": ["pack"]}},
            {"properties": {"format": {"const": "pdpack"}}, "required": ["pack"], "not": {"required": ["index_url"]}},
        ],
    },
    "UrlsRequest": {
        "type": "object",
        "description": "digests: a page of this version's chunks; none for an original-format pack",
        "properties": {"digests": {**_DIGESTS, "minItems": 1, "maxItems": CHUNK_PAGE}},
    },
    "UrlsAnswer": {
        "type": "object",
        "required": ["expires_at"],
        "additionalProperties": False,
        "properties": {
            "urls": {**_URLS, "description": "format 'chunks': digest -> presigned GET"},
            "pack": {**ref("PackAnswer"), "description": "format 'pdpack': a fresh presigned GET of the pack"},
            "expires_at": _STR,
        },
        "oneOf": [
            {"required": ["urls"], "not": {"required": ["pack"]}},
            {"required": ["pack"], "not": {"required": ["urls"]}},
        ],
    },
    "ReportRequest": _digest_page(REPORT_PAGE),
    "ReportAnswer": _obj({"quarantined": _DIGESTS, "intact": _DIGESTS}),
    # ---- garbage collection ----
    "GcRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "dry_run": {"type": "boolean", "default": False},
            "cursor": {
                "type": ["string", "null"],
                "pattern": GC_CURSOR_PATTERN,
                "description": "the next_cursor of the previous answer",
            },
            "grace_seconds": {"type": ["number", "null"], "minimum": 0, "description": "null: the default"},
        },
    },
    "GcAnswer": _obj(
        {
            "dry_run": _BOOL,
            "catalogs": _COUNT,
            "chunks_deleted": _COUNT,
            "chunk_bytes_deleted": _COUNT,
            "staged_deleted": _COUNT,
            "staged_bytes_deleted": _COUNT,
            "sessions_aborted": _COUNT,
            "next_cursor": _NULLABLE_STR,
        }
    ),
}

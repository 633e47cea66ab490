"""Where every object lives in the catalog's storage (bucket, container or folder), and what a key may
be: the one home of the storage-key rules of protocol v2 (docs/adr-002-storage-protocol-v2.md).

Only the server writes under ``catalogs/*/chunks/``, ``catalogs/*/objects/``, ``quarantine/`` and ``gc/``; clients
receive presigned PUT URLs for keys under ``staging/<nonce>/`` alone.

Every blob store (the embedded file store, S3, Azure Blob) checks each key with :func:`validate_key`
and each listing prefix with :func:`validate_prefix` before it touches storage, so every backend
accepts and refuses exactly the same keys. A key is a relative ``/``-separated path of at most
:data:`MAX_KEY_LENGTH` characters from :data:`KEY_ALPHABET` (URL-safe in a path, so a presigned URL
carries it unescaped), with no empty, ``.`` or ``..`` segment: it cannot leave a folder, and no two
spellings name one object. A segment may cost at most :data:`MAX_SEGMENT_BYTES`, an upper-case letter
counting twice: keys are case-sensitive, and a store on a case-insensitive file system must escape
those letters (``core.local.file_blobs`` stores ``X`` as ``%x``) and still fit a 255-byte file name.
"""

from __future__ import annotations

import re
from typing import Final

from core.errors import InvalidInput

__all__ = [
    "GC_CURSOR_KEY",
    "KEY_ALPHABET",
    "MAX_EXPIRES_IN",
    "MAX_KEY_LENGTH",
    "MAX_SEGMENT_BYTES",
    "MAX_SESSION_META_BYTES",
    "STAGING_ROOT",
    "chunk_key",
    "chunks_prefix",
    "gc_lease_key",
    "index_key",
    "is_nonce",
    "mark_key",
    "marks_prefix",
    "nonce_of_staging_key",
    "objects_prefix",
    "quarantine_key",
    "staging_chunk_key",
    "staging_index_key",
    "staging_meta_key",
    "staging_prefix",
    "stored_key",
    "validate_key",
    "validate_prefix",
]

STAGING_ROOT = "staging/"
GC_CURSOR_KEY = "gc/cursor.json"
MAX_SESSION_META_BYTES = 1 << 20  # a session's meta.json, which only the server writes
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")

MAX_KEY_LENGTH: Final = 1024
"""Characters in a key or prefix (S3 allows 1,024 bytes, Azure Blob 1,024 characters)."""
MAX_SEGMENT_BYTES: Final = 255
"""What one ``/``-separated segment may cost, each upper-case letter counting twice (see above)."""
KEY_ALPHABET: Final = "A-Z a-z 0-9 . _ + : - /"
"""The characters a key may use, as users read them (the rule itself is :data:`_KEY_CHARS`)."""
MAX_EXPIRES_IN: Final = 7 * 24 * 3600
"""The longest a presigned URL may live, in seconds, on every backend (SigV4's and a SAS's limit)."""
_KEY_CHARS = re.compile(r"[A-Za-z0-9._+:/-]*")


def _segment_bytes(segment: str) -> int:
    if segment == segment.lower():  # most keys (digests, nonces) have no capitals: skip the count
        return len(segment)
    return len(segment) + sum(1 for c in segment if "A" <= c <= "Z")


def _check_segments(segments: list[str], text: str, what: str) -> None:
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidInput(f"invalid {what} {text[:80]!r}: empty, '.' or '..' segment")
        if _segment_bytes(segment) > MAX_SEGMENT_BYTES:
            raise InvalidInput(f"invalid {what} {text[:80]!r}: a segment is too long")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidInput(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if "\x00" in value or "\\" in value:
        raise InvalidInput(f"invalid {what} {value[:80]!r}: NUL and backslash are not allowed")
    if value.startswith("/"):
        raise InvalidInput(f"invalid {what} {value[:80]!r}: must be relative")
    if not _KEY_CHARS.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value[:80]!r}: use only {KEY_ALPHABET}")
    return value


def validate_key(key: object) -> str:
    """``key`` as a valid object key (see the module docstring); :class:`InvalidInput` if it is not."""
    text = _check_text(key, "blob key")
    if not text:
        raise InvalidInput("blob key must not be empty")
    _check_segments(text.split("/"), text, "blob key")
    return text


def validate_prefix(prefix: object) -> str:
    """Like a key, but may be empty, end with ``/``, or stop in the middle of a segment (a listing)."""
    text = _check_text(prefix, "blob prefix")
    _check_segments(text.split("/")[:-1], text, "blob prefix")
    return text


def is_nonce(value: object) -> bool:
    return isinstance(value, str) and _NONCE.fullmatch(value) is not None


def chunks_prefix(catalog_id: str) -> str:
    return f"catalogs/{catalog_id}/chunks/"


def chunk_key(catalog_id: str, digest: str) -> str:
    """A verified chunk. Dedup is scoped to one catalog id: a digest from another grants nothing."""
    return f"{chunks_prefix(catalog_id)}{digest}"


def objects_prefix(catalog_id: str) -> str:
    return f"catalogs/{catalog_id}/objects/"


def stored_key(catalog_id: str, digest: str, block_size: int | None) -> str:
    """Where a verified object lives: ``chunks/`` for format 1 (named by sha256), ``objects/`` for
    formats 2 and 3 (named by the root of its ``block_size`` blocks). A format-1 index names chunks
    without their content, so format 1 keeps its own prefix: no such index can reach, confirm or
    quarantine an object. Formats 2 and 3 can share one: an index lists each object's blocks and is
    refused unless they hash to its name by the index's own function (sha256 or BLAKE3, each with its
    domain tag), so no index of one can name an object of the other."""
    if block_size is None:
        return chunk_key(catalog_id, digest)
    return f"{objects_prefix(catalog_id)}{digest}"


def index_key(manifest_prefix: str) -> str:
    """The committed index of one version (``catalogs/<id>/<version>/<arch>``)."""
    return f"{manifest_prefix}/index.json"


def staging_prefix(nonce: str) -> str:
    return f"{STAGING_ROOT}{nonce}/"


def staging_index_key(nonce: str) -> str:
    return f"{staging_prefix(nonce)}index.json"


def staging_meta_key(nonce: str) -> str:
    return f"{staging_prefix(nonce)}meta.json"


def staging_chunk_key(nonce: str, digest: str) -> str:
    return f"{staging_prefix(nonce)}chunks/{digest}"


def marks_prefix(nonce: str) -> str:
    return f"{staging_prefix(nonce)}marks/"


def mark_key(nonce: str, name: str) -> str:
    return f"{marks_prefix(nonce)}{name}.json"


def nonce_of_staging_key(key: str) -> str | None:
    """The session nonce of any key under ``staging/``; None for other keys."""
    if not key.startswith(STAGING_ROOT):
        return None
    nonce = key[len(STAGING_ROOT) :].split("/", 1)[0]
    return nonce if is_nonce(nonce) else None


def quarantine_key(catalog_id: str, digest: str) -> str:
    return f"quarantine/{catalog_id}/{digest}"


def gc_lease_key(catalog_id: str) -> str:
    return f"gc/leases/{catalog_id}.json"

"""Where every object lives in the catalog's storage (bucket, container or folder): the one home of
the storage-key rules of protocol v2 (docs/adr-002-storage-protocol-v2.md).

Only the server writes under ``catalogs/*/chunks/``, ``quarantine/`` and ``gc/``; clients receive
presigned PUT URLs for keys under ``staging/<nonce>/`` alone.
"""

from __future__ import annotations

import re

__all__ = [
    "GC_CURSOR_KEY",
    "STAGING_ROOT",
    "chunk_key",
    "chunks_prefix",
    "gc_lease_key",
    "index_key",
    "is_nonce",
    "mark_key",
    "marks_prefix",
    "nonce_of_staging_key",
    "quarantine_key",
    "staging_chunk_key",
    "staging_index_key",
    "staging_meta_key",
    "staging_prefix",
]

STAGING_ROOT = "staging/"
GC_CURSOR_KEY = "gc/cursor.json"
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")


def is_nonce(value: object) -> bool:
    return isinstance(value, str) and _NONCE.fullmatch(value) is not None


def chunks_prefix(catalog_id: str) -> str:
    return f"catalogs/{catalog_id}/chunks/"


def chunk_key(catalog_id: str, digest: str) -> str:
    """A verified chunk. Dedup is scoped to one catalog id: a digest from another grants nothing."""
    return f"{chunks_prefix(catalog_id)}{digest}"


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

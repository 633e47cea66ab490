"""Marks: what the server has confirmed for one upload session, kept in storage beside the session.

A mark is a small JSON object the server writes under ``staging/<nonce>/marks/`` (clients cannot
write there). It serves two readers:

- **commit** reads the *confirmed* marks to know, without a request per chunk, that every chunk of
  the index is verified in ``chunks/`` and how large each stored chunk is;
- **garbage collection** reads *every* mark (intents included) as a root: a chunk named in any mark
  of a live session is never swept. A request writes its intent mark *before* it looks at the GC
  lease, which is what makes dedup safe while a sweep runs (docs/adr-002-storage-protocol-v2.md).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.errors import NotFound
from core.fanout import parallel
from core.pack import is_digest
from core.ports import BlobStore
from core.storage_layout import mark_key, marks_prefix

__all__ = ["Confirmed", "SessionMarks", "read_marks", "write_confirmed", "write_intent"]

_MAX_MARK_BYTES = 1 << 20


@dataclass(frozen=True)
class Confirmed:
    """A chunk known to be verified in ``chunks/``: its stored (compressed) size and, when this
    session verified it, its raw size."""

    stored_size: int
    raw_size: int | None = None


@dataclass(frozen=True)
class SessionMarks:
    named: frozenset[str]  # every digest any mark names (GC roots)
    confirmed: Mapping[str, Confirmed]


def write_intent(blobs: BlobStore, nonce: str, digests: Iterable[str]) -> None:
    """Name ``digests`` as in use by this session before anything is decided about them."""
    doc = {"kind": "intent", "digests": sorted(set(digests))}
    blobs.put_bytes(mark_key(nonce, f"i-{secrets.token_hex(8)}"), json.dumps(doc, separators=(",", ":")).encode())


def write_confirmed(blobs: BlobStore, nonce: str, confirmed: Mapping[str, Confirmed]) -> None:
    if not confirmed:
        return
    doc = {
        "kind": "confirmed",
        "chunks": {d: [c.stored_size, c.raw_size] for d, c in sorted(confirmed.items())},
    }
    blobs.put_bytes(mark_key(nonce, f"c-{secrets.token_hex(8)}"), json.dumps(doc, separators=(",", ":")).encode())


def _parse(raw: bytes) -> tuple[set[str], dict[str, Confirmed]]:
    doc = json.loads(raw)
    named: set[str] = set()
    confirmed: dict[str, Confirmed] = {}
    if doc.get("kind") == "intent":
        named.update(d for d in doc.get("digests", []) if is_digest(d))
    elif doc.get("kind") == "confirmed":
        for digest, (stored, raw_size) in doc.get("chunks", {}).items():
            if is_digest(digest):
                named.add(digest)
                confirmed[digest] = Confirmed(int(stored), None if raw_size is None else int(raw_size))
    return named, confirmed


def read_marks(blobs: BlobStore, nonce: str) -> SessionMarks:
    """Every mark of one session: one listing plus one GET per mark, ``blobs.concurrency`` at once."""
    keys = [info.key for info in blobs.list(marks_prefix(nonce))]

    def load(key: str) -> tuple[set[str], dict[str, Confirmed]]:
        try:
            return _parse(blobs.get_bytes(key, max_bytes=_MAX_MARK_BYTES))
        except NotFound:  # the session was cleaned up meanwhile
            return set(), {}

    named: set[str] = set()
    confirmed: dict[str, Confirmed] = {}
    for part_named, part_confirmed in parallel(load, keys, workers=blobs.concurrency):
        named |= part_named
        for digest, entry in part_confirmed.items():
            # a later "already stored" mark knows no raw size: never let it hide a verified one
            if entry.raw_size is not None or digest not in confirmed:
                confirmed[digest] = entry
    return SessionMarks(frozenset(named), confirmed)

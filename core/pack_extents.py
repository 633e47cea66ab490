"""Index formats 2 and 3: the rules I1-I7 of docs/adr-004-incremental-chunking.md, for an untrusted index.

The same parser runs on the server (at commit) and on the client (before a pull uses an index, and
on the base a push builds on). Every violation is an ``InvalidInput`` naming its rule, and the work
is linear in the index: one pass over objects (each root recomputed from its listed blocks: the parser
never trusts a name), one over extents.
"""

from __future__ import annotations

from typing import Any

from core.errors import InvalidInput
from core.pack import (
    BLOCK_SIZES,
    FILE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_EXTENTS,
    MAX_FILES,
    Chunk,
    FileEntry,
    Naming,
    PackIndex,
    PackObject,
    check_files,
    is_digest,
    parse_entry,
)

__all__ = ["parse_extents_index"]

_TOP_KEYS = {"format", "compression", "chunk_size", "block_size", "size", "objects", "files"}
_ENTRY_KEYS = {
    FILE: {"path", "type", "mode", "size", "extents"},
    "dir": {"path", "type", "mode"},
    "symlink": {"path", "type", "mode", "target"},
}
_HEX = frozenset("0123456789abcdef")


def _whole(value: object) -> bool:
    return type(value) is int and value >= 0


def parse_extents_index(doc: dict[str, Any]) -> PackIndex:
    """Validate a format-2 or 3 index completely (I1-I7) and return it in the common in-memory shape."""
    fmt = doc["format"]
    if set(doc) != _TOP_KEYS:
        extra = sorted(set(doc) - _TOP_KEYS)
        raise InvalidInput(
            f"I1: a format-{fmt} index has exactly the keys {sorted(_TOP_KEYS)}"
            + (f"; unknown: {extra[:3]}" if extra else f"; missing: {sorted(_TOP_KEYS - set(doc))}")
        )
    if doc["compression"] != "zstd":
        raise InvalidInput("I1: unsupported chunk compression; expected 'zstd'")
    block_size, chunk_size = doc["block_size"], doc["chunk_size"]
    if type(block_size) is not int or block_size not in BLOCK_SIZES:
        raise InvalidInput(f"I2: block_size must be one of {list(BLOCK_SIZES)}")
    if type(chunk_size) is not int or not block_size <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % block_size:
        raise InvalidInput(f"I2: chunk_size must be a multiple of block_size from {block_size} to {MAX_CHUNK_SIZE}")
    naming = Naming(fmt, block_size)
    objects = _objects(doc["objects"], naming, chunk_size)
    raw_files = doc["files"]
    if not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
        raise InvalidInput(f"I4: 'files' must be a list of at most {MAX_FILES} entries")
    extents = _Extents(objects, block_size)
    files = [extents.entry(raw) for raw in raw_files]
    extents.check_all_referenced()
    if type(doc["size"]) is not int:
        raise InvalidInput("I4: size must be an integer")
    return PackIndex(
        chunk_size,
        check_files(files, doc["size"]),
        format=fmt,
        block_size=block_size,
        objects=tuple(objects),
    )


def _objects(raw: object, naming: Naming, chunk_size: int) -> list[PackObject]:
    block_size = naming.block_size
    assert block_size is not None
    if not isinstance(raw, list) or len(raw) > MAX_CHUNKS:
        raise InvalidInput(f"I3: 'objects' must be a list of at most {MAX_CHUNKS} entries")
    seen: set[str] = set()
    out: list[PackObject] = []
    for item in raw:
        if not isinstance(item, dict) or not {"digest", "size", "blocks"} <= set(item) <= {
            "digest",
            "size",
            "blocks",
            "stored_size",
        }:
            raise InvalidInput("I3: every object has exactly digest, size, blocks (and stored_size once committed)")
        digest, size, blocks = item["digest"], item["size"], item["blocks"]
        if not is_digest(digest) or digest in seen:
            raise InvalidInput("I3: object digests are 64 lower-case hex characters, each listed once")
        if type(size) is not int or not 0 < size <= chunk_size:
            raise InvalidInput(f"I3: object {digest[:12]} must hold 1 to chunk_size bytes")
        count = -(-size // block_size)
        if not isinstance(blocks, str) or len(blocks) != 64 * count or not _HEX.issuperset(blocks):
            raise InvalidInput(f"I3: object {digest[:12]} must list {count} block digests in lower-case hex")
        raw = bytes.fromhex(blocks)
        if naming.root(raw, size) != digest:
            raise InvalidInput(f"I3: object {digest[:12]} is not named by the root of its blocks")
        stored = item.get("stored_size")
        if stored is not None and (type(stored) is not int or stored <= 0):
            raise InvalidInput(f"I3: stored_size of object {digest[:12]} must be a positive integer")
        seen.add(digest)
        out.append(PackObject(digest, size, raw, stored))
    return out


class _Extents:
    """Parses the files' extents against the object list (I4-I6), counting as it goes."""

    def __init__(self, objects: list[PackObject], block_size: int) -> None:
        self.objects, self.block_size = objects, block_size
        self.count = 0
        self.next_new = 0  # objects are listed in the order of their first reference (I6)

    def entry(self, raw: object) -> FileEntry:
        head = parse_entry(raw)
        assert isinstance(raw, dict)
        if set(raw) != _ENTRY_KEYS[head.type]:
            raise InvalidInput(f"I4: {head.path[:80]!r} must have exactly the keys {sorted(_ENTRY_KEYS[head.type])}")
        if head.type != FILE:
            return head
        raw_extents = raw["extents"]
        if not isinstance(raw_extents, list) or len(raw_extents) > MAX_EXTENTS - self.count:
            raise InvalidInput(f"I5: extents of {head.path[:80]!r} must be a list; at most {MAX_EXTENTS} in all")
        self.count += len(raw_extents)
        pieces: list[Chunk] = []
        end = 0
        for extent in raw_extents:
            piece = self._extent(head, extent)
            if piece.offset < end:
                raise InvalidInput(f"I5: extents of {head.path[:80]!r} must be in order and must not overlap")
            end = piece.offset + piece.size
            pieces.append(piece)
        return FileEntry(head.path, FILE, head.mode, head.size, tuple(pieces))

    def _extent(self, entry: FileEntry, extent: object) -> Chunk:
        where = f"an extent of {entry.path[:80]!r}"
        if not isinstance(extent, list) or len(extent) != 4 or not all(_whole(v) for v in extent):
            raise InvalidInput(f"I5: {where} must be four non-negative integers")
        file_offset, length, number, object_offset = extent
        if number >= len(self.objects) or length < 1:
            raise InvalidInput(f"I5: {where} names no object or is empty")
        if number > self.next_new:
            raise InvalidInput("I6: objects must be listed in the order of their first reference")
        self.next_new = max(self.next_new, number + 1)
        obj = self.objects[number]
        if file_offset + length > entry.size or object_offset + length > obj.size:
            raise InvalidInput(f"I5: {where} reaches past the end of its file or its object")
        bs = self.block_size
        if file_offset % bs or object_offset % bs:
            raise InvalidInput(f"I5: {where} must start on the {bs}-byte block grid in both file and object")
        if length % bs and not (object_offset + length == obj.size and file_offset + length == entry.size):
            raise InvalidInput(f"I5: {where} must cover whole blocks (a short block only ends a file and an object)")
        return Chunk(file_offset, length, obj.digest, None, object_offset)

    def check_all_referenced(self) -> None:
        if self.next_new != len(self.objects):
            raise InvalidInput("I6: every object must be referenced by an extent")

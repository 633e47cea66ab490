"""The pack format: a VM bundle as an index plus content-addressed chunks.

Every regular file is cut on a fixed grid of ``chunk_size`` bytes (4 MiB by default). A grid cell that is all zeros or
lies in a hole is simply absent from the file's chunk list (it reads back as zeros and is written back
as a hole). Every other cell is a chunk, named by the sha256 of its *raw* bytes and stored
zstd-compressed at ``catalogs/<catalog_id>/chunks/<sha256>`` (``core.storage_layout.chunk_key``). The
grid keeps chunk boundaries stable between versions of a VM, which is what makes a second version
upload only what changed.

Format 2 (docs/adr-004-incremental-chunking.md) keeps that grid for a first push and makes later ones
incremental: a file is a list of *extents*, each a run of the file taken from part of an *object*, and
an object (at most ``chunk_size`` raw bytes) is named by the root of the sha256 digests of its
``block_size`` blocks (``Naming.root``), which the index lists. A pusher compares its blocks with the
previous version's and uploads only the changed ones, packed into new objects; the server verifies an
object by recomputing its root, so the block digests a later pusher relies on are never a client's word.
Format 3 (docs/adr-005-blake3-object-names.md), what a push writes by default, is format 2 with BLAKE3
in place of sha256 for the blocks and the root: hashing is then a fifth of the CPU on both ends.
In memory all formats are the same shape: a file's ``chunks`` are pieces of objects
(``Chunk.object_offset`` is 0 and the piece is the whole object in format 1).

The index is JSON; its canonical form (sorted keys, no spaces) hashed with sha256 is the pack digest.
This module is pure: parsing and validation here, file I/O in ``client.packer``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import InvalidInput

__all__ = [
    "BLOCK_SIZES",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "EXTENT_FORMATS",
    "FORMAT_BLAKE3",
    "FORMAT_EXTENTS",
    "FORMAT_VERSION",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_EXTENTS",
    "MAX_FILE_SIZE",
    "MAX_PACK_SIZE",
    "MIN_CHUNK_SIZE",
    "PACK_FORMATS",
    "SHA256_CELLS",
    "Chunk",
    "ContentHasher",
    "FileEntry",
    "Naming",
    "PackIndex",
    "PackObject",
    "check_files",
    "grid",
    "is_digest",
    "parse_entry",
    "validate_relative_path",
]

FORMAT_VERSION = 1
FORMAT_EXTENTS = 2  # extents over block-verified objects (docs/adr-004-incremental-chunking.md)
FORMAT_BLAKE3 = 3  # format 2 with objects named by BLAKE3 (docs/adr-005-blake3-object-names.md)
EXTENT_FORMATS = (FORMAT_EXTENTS, FORMAT_BLAKE3)
PACK_FORMATS = (FORMAT_VERSION, *EXTENT_FORMATS)
BLOCK_SIZES = (65536, 131072, 262144, 524288, 1048576)
DEFAULT_BLOCK_SIZE = 131072
# Extents in one index: a 100 GB VM has ~24,000-52,000 (ADR 004), so this fits ~2 TB of data and keeps a
# server's parse of a hostile index to seconds and a few hundred MB, as format 1's chunk bound does.
MAX_EXTENTS = 1_000_000
_ROOT_DOMAINS = {FORMAT_EXTENTS: b"pdcat-object-v2\x00", FORMAT_BLAKE3: b"pdcat-object-v3\x00"}
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024  # see docs/adr-001-chunk-size.md
MIN_CHUNK_SIZE = 4096
# The server verifies a chunk in memory (core.chunk_check), a few at a time per request: 64 MiB keeps
# that bounded on a Lambda or a Function (docs/adr-002-storage-protocol-v2.md).
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_FILES = 100_000
# Bounds on what an index may declare, so no index (hostile or corrupt) can make a server or a client
# allocate, plan or pre-size absurdly (a client plans its free space and pre-sizes sparse files from
# these figures before it downloads a byte):
# - a file holds at most 16 TiB: the largest file ext4 stores with 4 KiB blocks (where `pdcat serve`
#   and Linux pulls write), and far above any virtual disk file a Parallels bundle holds (disks are
#   split into .hds files; a VM disk of a few TiB is already extreme);
# - a pack holds at most 64 TiB in all (a few such disks);
# - an index names at most 10 million chunks: 40 TiB of data at the default 4 MiB grid, and about a
#   gigabyte of index JSON (a server reads at most core.wire.MAX_INDEX_BYTES of it anyway), so the
#   client's per-chunk bookkeeping stays within a laptop's memory.
MAX_FILE_SIZE = 16 * 1024**4
MAX_PACK_SIZE = 64 * 1024**4
MAX_CHUNKS = 10_000_000
MAX_PATH = 1024
MAX_DEPTH = 64
_DIGEST = re.compile(r"[0-9a-f]{64}")
FILE, DIR, SYMLINK = "file", "dir", "symlink"


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def grid(size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of every grid cell of a file of ``size`` bytes."""
    for offset in range(0, size, chunk_size):
        yield offset, min(chunk_size, size - offset)


@functools.cache
def _blake3() -> Callable[..., Any]:
    """The BLAKE3 hasher class, imported on the first format-3 use (commands that never hash skip it)."""
    from blake3 import blake3

    return blake3


@dataclass(frozen=True)
class Naming:
    """How a pack names its objects, by its index format: format 1 names a grid cell by the sha256 of
    its raw bytes; formats 2 and 3 name an object by the root of its ``block_size`` blocks' digests,
    sha256 in format 2 and BLAKE3 in format 3 (docs/adr-005-blake3-object-names.md). Every party that
    names or checks an object (a pusher, the server, a puller, the cache) asks this one class."""

    format: int = FORMAT_VERSION
    block_size: int | None = None

    def __post_init__(self) -> None:
        if (self.block_size is None) != (self.format == FORMAT_VERSION) or self.format not in PACK_FORMATS:
            raise ValueError(f"no object naming for format {self.format!r} with block size {self.block_size!r}")

    def new_hash(self, data: bytes | bytearray | memoryview = b"") -> Any:
        """A fresh hash object of this format's function (hashlib's interface: update, digest)."""
        return _blake3()(data) if self.format == FORMAT_BLAKE3 else hashlib.sha256(data)

    def block_digests(self, data: bytes | bytearray | memoryview) -> bytes:
        """The raw digest of each ``block_size`` block of ``data`` (the last may be short), concatenated."""
        assert self.block_size is not None
        view, size, new = memoryview(data), self.block_size, self.new_hash
        return b"".join(new(view[i : i + size]).digest() for i in range(0, len(view), size))

    def root(self, blocks: bytes, size: int) -> str:
        """An object's name: the hash over a domain tag, the block size, the object's size and its
        blocks' digests. The name binds the size, so no index can give a stored object another one."""
        assert self.block_size is not None
        head = _ROOT_DOMAINS[self.format] + self.block_size.to_bytes(8, "big") + size.to_bytes(8, "big")
        return str(self.new_hash(head + blocks).hexdigest())

    def digest(self, data: bytes | bytearray | memoryview) -> str:
        """The name of an object holding ``data``."""
        if self.block_size is None:
            return hashlib.sha256(data).hexdigest()
        return self.root(self.block_digests(data), len(data))

    def hasher(self) -> ContentHasher:
        return ContentHasher(self)


SHA256_CELLS = Naming()
"""Format 1's naming."""


class ContentHasher:
    """``Naming.digest`` of bytes that arrive in pieces of any size (a streamed decompression)."""

    def __init__(self, naming: Naming) -> None:
        self._naming = naming
        self._block_size = naming.block_size
        self._whole = hashlib.sha256()
        self._block = naming.new_hash()
        self._in_block = 0
        self._size = 0
        self._blocks: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._block_size is None:
            self._whole.update(data)
            return
        view = memoryview(data)
        self._size += len(view)
        while view:
            take = min(len(view), self._block_size - self._in_block)
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == self._block_size:
                self._blocks.append(self._block.digest())
                self._block, self._in_block = self._naming.new_hash(), 0

    def hexdigest(self) -> str:
        if self._block_size is None:
            return self._whole.hexdigest()
        blocks = self._blocks + ([self._block.digest()] if self._in_block else [])
        return self._naming.root(b"".join(blocks), self._size)


def validate_relative_path(path: object) -> str:
    """A bundle-relative POSIX path that cannot escape the bundle."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("every file needs a non-empty path")
    if len(path) > MAX_PATH or "\x00" in path or path.startswith("/") or "\\" in path:
        raise InvalidInput(f"invalid path in pack: {path[:80]!r}")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidInput(f"path nested deeper than {MAX_DEPTH} folders: {path[:80]!r}")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"invalid path in pack (empty, '.' or '..' segment): {path[:80]!r}")
    return path


@dataclass(frozen=True)
class Chunk:
    """A piece of a file: ``size`` bytes at ``offset`` in the file are the bytes at ``object_offset``
    of the object named ``digest``. In format 1 the piece is the whole object (a grid cell)."""

    offset: int
    size: int
    digest: str
    stored_size: int | None = None
    object_offset: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"offset": self.offset, "size": self.size, "digest": self.digest}
        if self.stored_size is not None:
            out["stored_size"] = self.stored_size
        return out


@dataclass(frozen=True)
class FileEntry:
    path: str
    type: str = FILE
    mode: int = 0o644
    size: int = 0
    chunks: tuple[Chunk, ...] = ()
    target: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode}
        if self.type == FILE:
            out["size"] = self.size
            out["chunks"] = [c.to_json() for c in self.chunks]
        if self.type == SYMLINK:
            out["target"] = self.target
        return out


@dataclass(frozen=True)
class PackObject:
    """A format-2 or 3 object: ``size`` raw bytes whose blocks hash to ``blocks`` (their raw digests,
    32 bytes each, by the index's ``Naming``; hex in the JSON). Kept raw: half the memory of the hex
    text, which for a 100 GB VM is tens of MB a pull or push holds."""

    digest: str
    size: int
    blocks: bytes
    stored_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size, "blocks": self.blocks.hex()}
        if self.stored_size is not None:
            out["stored_size"] = self.stored_size
        return out


@dataclass(frozen=True)
class PackIndex:
    chunk_size: int
    files: tuple[FileEntry, ...]
    format: int = FORMAT_VERSION
    compression: str = "zstd"
    extra: dict[str, Any] = field(default_factory=dict)
    block_size: int | None = None  # formats 2 and 3 only
    objects: tuple[PackObject, ...] = ()  # formats 2 and 3 only, in the order of their first reference

    # ---- derived figures --------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Logical (unpacked) bytes of all regular files, holes included."""
        return sum(f.size for f in self.files if f.type == FILE)

    def chunks(self) -> Iterator[Chunk]:
        for f in self.files:
            yield from f.chunks

    def unique_digests(self) -> dict[str, int]:
        """digest -> raw size, each stored object once."""
        if self.extents:
            return {o.digest: o.size for o in self.objects}
        return {c.digest: c.size for c in self.chunks()}

    def stored_sizes(self) -> dict[str, int]:
        """digest -> bytes of its stored (compressed) object; its raw size where the index does not say."""
        if self.extents:
            return {o.digest: o.stored_size or o.size for o in self.objects}
        return {c.digest: c.stored_size or c.size for c in self.chunks()}

    @property
    def extents(self) -> bool:
        """Whether files are extents over objects (formats 2 and 3), not lists of grid cells (format 1)."""
        return self.format in EXTENT_FORMATS

    @property
    def naming(self) -> Naming:
        return Naming(self.format, self.block_size)

    def matches(self, digest: str, raw: bytes | bytearray | memoryview) -> bool:
        """Whether ``raw`` is the object named ``digest`` in this index's format."""
        return self.naming.digest(raw) == digest

    @property
    def stored_size(self) -> int:
        if self.extents:
            return sum(o.stored_size or 0 for o in self.objects)
        sizes: dict[str, int] = {}
        for c in self.chunks():
            sizes[c.digest] = c.stored_size or 0
        return sum(sizes.values())

    @property
    def data_size(self) -> int:
        """Bytes that are neither holes nor zero runs: once per unique chunk (format 1), once per
        extent (format 2: what a pull writes)."""
        if self.extents:
            return sum(c.size for c in self.chunks())
        return sum(self.unique_digests().values())

    # ---- serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        if self.extents:
            return self._extents_json()
        return {
            "format": self.format,
            "compression": self.compression,
            "chunk_size": self.chunk_size,
            "size": self.size,
            "files": [f.to_json() for f in self.files],
        }

    def _extents_json(self) -> dict[str, Any]:
        number = {o.digest: i for i, o in enumerate(self.objects)}
        files: list[dict[str, Any]] = []
        for f in self.files:
            out: dict[str, Any] = {"path": f.path, "type": f.type, "mode": f.mode}
            if f.type == FILE:
                out["size"] = f.size
                out["extents"] = [[c.offset, c.size, number[c.digest], c.object_offset] for c in f.chunks]
            if f.type == SYMLINK:
                out["target"] = f.target
            files.append(out)
        return {
            "format": self.format,
            "compression": self.compression,
            "chunk_size": self.chunk_size,
            "block_size": self.block_size,
            "size": self.size,
            "objects": [o.to_json() for o in self.objects],
            "files": files,
        }

    def canonical_bytes(self) -> bytes:
        return self._canonical

    @functools.cached_property
    def _canonical(self) -> bytes:
        """Made once per index (it is immutable): a commit stores it, digests it and logs the digest,
        and for a 100 GB VM each serialisation is tens of MB of JSON."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self._canonical).hexdigest()

    def with_stored_sizes(self, sizes: dict[str, int]) -> PackIndex:
        if self.extents:
            objects = tuple(replace(o, stored_size=sizes[o.digest]) for o in self.objects)
            return replace(self, objects=objects, extra=dict(self.extra))
        files = tuple(
            FileEntry(
                f.path,
                f.type,
                f.mode,
                f.size,
                tuple(Chunk(c.offset, c.size, c.digest, sizes[c.digest]) for c in f.chunks),
                f.target,
            )
            for f in self.files
        )
        return PackIndex(self.chunk_size, files, self.format, self.compression, dict(self.extra))

    @classmethod
    def from_bytes(cls, data: bytes) -> PackIndex:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput("the pack index is not valid JSON") from exc
        return cls.parse(doc)

    @classmethod
    def parse(cls, doc: object) -> PackIndex:
        """Validate an untrusted index completely; every rule here protects a server or a client."""
        if not isinstance(doc, dict):
            raise InvalidInput("the pack index must be a JSON object")
        if type(doc.get("format")) is int and doc["format"] in EXTENT_FORMATS:
            from core.pack_extents import parse_extents_index  # formats 2 and 3: rules in their own module

            return parse_extents_index(doc)
        if doc.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise InvalidInput(
                f"unsupported pack format {doc.get('format')!r}; this pdcat reads formats 1 to {FORMAT_BLAKE3}"
            )
        if doc.get("compression", "zstd") != "zstd":
            raise InvalidInput("unsupported chunk compression; expected 'zstd'")
        chunk_size = _int(doc.get("chunk_size"), "chunk_size")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % MIN_CHUNK_SIZE:
            raise InvalidInput(
                f"chunk_size must be a multiple of {MIN_CHUNK_SIZE} between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )
        raw_files = doc.get("files")
        if not isinstance(raw_files, list):
            raise InvalidInput("the pack index needs a 'files' list")
        if len(raw_files) > MAX_FILES:
            raise InvalidInput(f"a pack holds at most {MAX_FILES} files")
        parsed: list[FileEntry] = []
        total_chunks = 0
        for raw in raw_files:
            entry = _parse_file(raw, chunk_size, MAX_CHUNKS - total_chunks)
            total_chunks += len(entry.chunks)
            parsed.append(entry)
        return cls(chunk_size, check_files(parsed, doc.get("size")))


def _check_nesting(files: tuple[FileEntry, ...]) -> None:
    """Paths are unique and nothing lies inside a file or a symlink.

    An entry under a symlink would be written through it on unpack, wherever it points; an entry
    under a file can never be unpacked. Sorted paths make this one bisect per entry, so a hostile
    index of deep paths costs n log n, not n times its depth.
    """
    paths = sorted(f.path for f in files)
    for before, after in itertools.pairwise(paths):
        if before == after:
            raise InvalidInput(f"duplicate path in pack: {after[:80]!r}")
    for f in files:
        if f.type == DIR:
            continue
        inner = bisect.bisect_left(paths, f.path + "/")
        if inner < len(paths) and paths[inner].startswith(f.path + "/"):
            raise InvalidInput(f"{paths[inner][:80]!r} lies inside {f.path[:80]!r}, which is a {f.type}, not a folder")


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer")
    return value


def parse_entry(raw: object) -> FileEntry:
    """One entry of ``files`` without its content: path, type, mode, and a file's size or a
    symlink's target, checked as both formats require."""
    if not isinstance(raw, dict):
        raise InvalidInput("every entry of 'files' must be an object")
    path = validate_relative_path(raw.get("path"))
    kind = raw.get("type", FILE)
    mode = _int(raw.get("mode", 0o644), f"mode of {path}") & 0o7777
    if kind == DIR:
        return FileEntry(path, DIR, mode)
    if kind == SYMLINK:
        target = raw.get("target")
        if (
            not isinstance(target, str)
            or not target
            or len(target) > MAX_PATH
            or target.startswith("/")
            or "\x00" in target
        ):
            raise InvalidInput(f"symlink {path!r} must have a relative target")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if resolved == ".." or resolved.startswith("../"):
            raise InvalidInput(f"symlink {path!r} points outside the bundle")
        return FileEntry(path, SYMLINK, mode, target=target)
    if kind != FILE:
        raise InvalidInput(f"{path!r}: type must be file, dir or symlink (devices and sockets are refused)")
    size = _int(raw.get("size"), f"size of {path}")
    if size > MAX_FILE_SIZE:
        raise InvalidInput(
            f"{path[:80]!r} declares {size} bytes; a file in a pack holds at most {MAX_FILE_SIZE} (16 TiB)"
        )
    return FileEntry(path, FILE, mode, size)


def check_files(files: list[FileEntry], declared_size: object) -> tuple[FileEntry, ...]:
    """The rules on the file list as a whole, shared by both formats: total size, nesting, the
    declared ``size``."""
    total = 0
    for entry in files:
        total += entry.size
        if total > MAX_PACK_SIZE:
            raise InvalidInput(f"the pack is larger than {MAX_PACK_SIZE} bytes (64 TiB) in all, at {entry.path[:80]!r}")
    out = tuple(files)
    _check_nesting(out)
    if declared_size is not None and declared_size != total:
        raise InvalidInput("the pack index size does not match the sum of its file sizes")
    return out


def _parse_file(raw: object, chunk_size: int, chunks_left: int) -> FileEntry:
    """One entry of ``files``; ``chunks_left``: how many chunk entries the index may still name."""
    head = parse_entry(raw)
    if head.type != FILE:
        return head
    assert isinstance(raw, dict)
    path, mode, size = head.path, head.mode, head.size
    raw_chunks = raw.get("chunks", [])
    if not isinstance(raw_chunks, list):
        raise InvalidInput(f"chunks of {path!r} must be a list")
    if len(raw_chunks) > chunks_left:
        raise InvalidInput(f"{path[:80]!r} takes the index past {MAX_CHUNKS} chunk entries, the most a pack may name")
    chunks: list[Chunk] = []
    last_end = 0
    for rc in raw_chunks:
        if not isinstance(rc, dict):
            raise InvalidInput(f"every chunk of {path!r} must be an object")
        offset = _int(rc.get("offset"), f"chunk offset in {path}")
        length = _int(rc.get("size"), f"chunk size in {path}")
        digest = rc.get("digest")
        if not is_digest(digest):
            raise InvalidInput(f"chunk digests must be 64 lower-case hex characters ({path!r})")
        if offset % chunk_size or offset < last_end:
            raise InvalidInput(f"chunks of {path!r} must sit on the {chunk_size}-byte grid, in order")
        if not 0 < length <= chunk_size or offset + length > size:
            raise InvalidInput(f"chunk at {offset} of {path!r} has an invalid size")
        if length != min(chunk_size, size - offset):
            raise InvalidInput(f"chunk at {offset} of {path!r} must cover its whole grid cell")
        stored = rc.get("stored_size")
        chunks.append(Chunk(offset, length, str(digest), None if stored is None else _int(stored, "stored_size")))
        last_end = offset + length
    return FileEntry(path, FILE, mode, size, tuple(chunks))

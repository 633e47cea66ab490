"""What an incremental push sends (index formats 2 and 3, docs/adr-004-incremental-chunking.md).

The push reads each grid cell once and hashes its blocks; ``ExtentsBuilder`` decides, cell by cell,
in bundle order:

* a block whose digest is the base version's block at the same path and offset keeps pointing into
  the base's object (``BaseMap``); a zero block that is not is a hole; any other block is new;
* a cell none of whose blocks can be reused becomes one object holding the whole cell (zero blocks
  included): exactly format 1's chunk, so a first push costs what it always did;
* the new blocks of the other cells are packed, in file order, into objects of up to ``chunk_size``.

After the pass, ``repack`` keeps old versions from fragmenting the new one: while the base objects
still used plus the new bytes exceed ``REPACK_BUDGET`` times the version's data, the used blocks of
the base object with the smallest used share are read again from the bundle and packed anew.
``index`` then lists every object in the order of its first reference, as the format requires.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from core.pack import FILE, Chunk, FileEntry, Naming, PackIndex, PackObject

__all__ = ["REPACK_BUDGET", "BaseMap", "ExtentsBuilder", "NewObject", "Segment", "choose_block_size"]

REPACK_BUDGET = 1.25
"""Objects a version keeps alive, at most this many times its data (ADR 004, "Over many versions")."""

Segment = tuple[str, int, int]
"""``(path, file_offset, length)``: where some bytes of a new object are read from in the bundle."""

_BLOCK_SIZE_LIMITS = ((131072, 32 * 10**9), (262144, 64 * 10**9), (524288, 128 * 10**9), (1048576, 2 * 10**12))


def choose_block_size(data_bytes: int) -> int | None:
    """The block size a first push uses for this much data; None above 2 TB of data (such a bundle is
    pushed in format 1).

    Up to 128 GB of data a bundle has at most ~250,000 blocks: its index (16 MB of JSON, 8 MB of
    block digests held by a pull or a push) keeps the client within its memory budget. Scattered
    1 MiB writes then cost 1.09x (128 KiB blocks), 1.15x (256 KiB) or 1.29x (512 KiB) the bytes
    changed (docs/adr-004-incremental-chunking.md); beyond, 1 MiB blocks cost more."""
    for block_size, limit in _BLOCK_SIZE_LIMITS:
        if data_bytes < limit:
            return block_size
    return None


class _New:
    """An object this push creates: a whole cell, or blocks packed together. Named when sealed."""

    __slots__ = ("blocks", "digest", "segments", "size")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.segments: list[Segment] = []
        self.size = 0
        self.digest = ""


_Ref = PackObject | _New


@dataclass
class _Piece:
    """Bytes ``file_offset … +length`` of a file are bytes ``object_offset …`` of ``ref``."""

    file_offset: int
    length: int
    ref: _Ref
    object_offset: int


@dataclass
class NewObject:
    """An object to upload: its name, its raw bytes, and where they were read from."""

    digest: str
    data: memoryview
    segments: tuple[Segment, ...]


class BaseMap:
    """The base version's blocks, by path and file offset: which object holds each, where.

    Kept as each file's extents (sorted) plus the objects' block digests, so memory is the base
    index's, not a table per block.
    """

    def __init__(self, base: PackIndex) -> None:
        if not base.extents or base.block_size is None:
            raise ValueError("a base must be an index in format 2 or 3")
        self.block_size = base.block_size
        self.objects = {o.digest: o for o in base.objects}
        self._files: dict[str, tuple[list[int], tuple[Chunk, ...]]] = {
            f.path: ([c.offset for c in f.chunks], f.chunks) for f in base.files if f.type == FILE and f.chunks
        }

    def keep_only(self, stored: set[str]) -> None:
        """Forget the objects the catalog no longer holds: their blocks are sent again."""
        self.objects = {d: o for d, o in self.objects.items() if d in stored}

    def at(self, path: str, file_offset: int) -> tuple[PackObject, int, bytes] | None:
        """The base object holding the block at ``file_offset`` of ``path``, the block's offset in
        it, and the block's digest; None where the base has no (usable) block there."""
        found = self._files.get(path)
        if found is None:
            return None
        starts, pieces = found
        i = bisect.bisect_right(starts, file_offset) - 1
        if i < 0:
            return None
        piece = pieces[i]
        if file_offset >= piece.offset + piece.size:
            return None
        obj = self.objects.get(piece.digest)
        if obj is None:
            return None
        object_offset = piece.object_offset + (file_offset - piece.offset)
        block = object_offset // self.block_size
        return obj, object_offset, obj.blocks[32 * block : 32 * block + 32]


@dataclass
class _File:
    entry: FileEntry
    pieces: list[_Piece] = field(default_factory=list)

    def add(self, file_offset: int, length: int, ref: _Ref, object_offset: int) -> None:
        """Append a run, merged into the previous one where it continues it in file and object."""
        last = self.pieces[-1] if self.pieces else None
        if (
            last is not None
            and last.ref is ref
            and last.file_offset + last.length == file_offset
            and last.object_offset + last.length == object_offset
        ):
            last.length += length
        else:
            self.pieces.append(_Piece(file_offset, length, ref, object_offset))


class ExtentsBuilder:
    """Builds a format-2 or 3 index (``naming``'s) while the push reads the bundle (see the module's docstring).

    ``cell`` is called in bundle order; the objects it seals are handed to ``emit`` (the push uploads
    them). ``pack_buffer`` gives a buffer of ``chunk_size`` bytes for packing, and may block until an
    earlier packed object has been sent: packed objects in flight are bounded like cells.
    """

    def __init__(
        self,
        naming: Naming,
        chunk_size: int,
        base: BaseMap | None,
        emit: Callable[[NewObject], None],
        pack_buffer: Callable[[], bytearray],
    ) -> None:
        if naming.block_size is None:
            raise ValueError("an extents index names objects by blocks")
        self.naming, self.block_size, self.chunk_size, self.base = naming, naming.block_size, chunk_size, base
        self._emit, self._pack_buffer = emit, pack_buffer
        self._files: dict[str, _File] = {}
        self._pack: _New | None = None
        self._pack_data: bytearray | None = None
        self._zero: dict[int, bytes] = {}
        self.reused_bytes = 0

    # ---- the pass ------------------------------------------------------------------------------
    def file(self, entry: FileEntry) -> None:
        self._files[entry.path] = _File(entry)

    def cell(self, path: str, offset: int, data: memoryview, blocks: bytes) -> str | None:
        """One data cell and its blocks' raw digests. Returns the object name when the whole cell is
        to be uploaded as one object from ``data`` (the caller does that); None when its blocks were
        reused, packed (``data`` is free again) or all zero."""
        file = self._files[path]
        bs = self.block_size
        count = len(blocks) // 32
        digests = [blocks[32 * i : 32 * i + 32] for i in range(count)]
        reused = [self._reusable(path, offset + i * bs, d) for i, d in enumerate(digests)]
        if not any(reused):
            whole = _New()
            whole.blocks, whole.size, whole.segments = [blocks], len(data), [(path, offset, len(data))]
            whole.digest = self.naming.root(blocks, len(data))
            file.add(offset, len(data), whole, 0)
            return whole.digest
        for i, digest in enumerate(digests):
            start = i * bs
            length = min(bs, len(data) - start)
            found = reused[i]
            if found is not None:
                obj, object_offset = found
                file.add(offset + start, length, obj, object_offset)
                self.reused_bytes += length
            elif digest != self._zero_digest(length):
                self._add_to_pack(file, path, offset + start, data[start : start + length], digest)
        return None

    def _reusable(self, path: str, file_offset: int, digest: bytes) -> tuple[PackObject, int] | None:
        if self.base is None:
            return None
        found = self.base.at(path, file_offset)
        if found is None or found[2] != digest:
            return None
        return found[0], found[1]

    def _zero_digest(self, length: int) -> bytes:
        digest = self._zero.get(length)
        if digest is None:
            digest = self._zero[length] = self.naming.new_hash(bytes(length)).digest()
        return digest

    def _add_to_pack(self, file: _File, path: str, file_offset: int, block: memoryview, digest: bytes) -> None:
        if self._pack is not None and self._pack.size + len(block) > self.chunk_size:
            self._seal()
        if self._pack is None or self._pack_data is None:
            self._pack, self._pack_data = _New(), self._pack_buffer()
        pack, data = self._pack, self._pack_data
        data[pack.size : pack.size + len(block)] = block
        file.add(file_offset, len(block), pack, pack.size)
        last = pack.segments[-1] if pack.segments else None
        if last is not None and last[0] == path and last[1] + last[2] == file_offset:
            pack.segments[-1] = (path, last[1], last[2] + len(block))
        else:
            pack.segments.append((path, file_offset, len(block)))
        pack.blocks.append(digest)
        pack.size += len(block)
        if len(block) < self.block_size:  # a file's short last block ends its object
            self._seal()

    def _seal(self) -> None:
        pack, data = self._pack, self._pack_data
        self._pack = self._pack_data = None
        if pack is None or data is None or not pack.size:
            return
        pack.digest = self.naming.root(b"".join(pack.blocks), pack.size)
        self._emit(NewObject(pack.digest, memoryview(data)[: pack.size], tuple(pack.segments)))

    def finish(self) -> None:
        """Seal the last packed object."""
        self._seal()

    # ---- after the pass -------------------------------------------------------------------------
    def repack(self, read: Callable[[str, int, int], bytes]) -> None:
        """Keep the objects this version keeps alive within ``REPACK_BUDGET`` times its data: re-send
        the used blocks of the least-used base objects, read again with ``read(path, offset, length)``."""
        used: dict[str, int] = {}
        objects: dict[str, PackObject] = {}
        data = new = 0
        for file in self._files.values():
            for piece in file.pieces:
                data += piece.length
                if isinstance(piece.ref, PackObject):
                    used[piece.ref.digest] = used.get(piece.ref.digest, 0) + piece.length
                    objects[piece.ref.digest] = piece.ref
                else:
                    new += piece.length
        kept = new + sum(o.size for o in objects.values())
        victims: set[str] = set()
        for digest in sorted(used, key=lambda d: (used[d] / objects[d].size, d)):
            if kept <= REPACK_BUDGET * data:
                break
            victims.add(digest)
            kept -= objects[digest].size - used[digest]
        if not victims:
            return
        for file in self._files.values():
            pieces, file.pieces = file.pieces, []
            for piece in pieces:
                if isinstance(piece.ref, PackObject) and piece.ref.digest in victims:
                    self._resend(file, piece, read)
                else:
                    file.pieces.append(piece)
        self._seal()

    def _resend(self, file: _File, piece: _Piece, read: Callable[[str, int, int], bytes]) -> None:
        assert isinstance(piece.ref, PackObject)
        bs, path = self.block_size, file.entry.path
        raw = read(path, piece.file_offset, piece.length)
        for start in range(0, piece.length, bs):
            block = memoryview(raw)[start : start + bs]
            digest = self.naming.new_hash(block).digest()
            at = (piece.object_offset + start) // bs
            if digest != piece.ref.blocks[32 * at : 32 * at + 32]:
                from core.errors import Conflict

                raise Conflict(f"{path} changed while pushing; stop the VM and push again")
            self._add_to_pack(file, path, piece.file_offset + start, block, digest)

    # ---- the index ------------------------------------------------------------------------------
    def index(self, entries: list[FileEntry]) -> PackIndex:
        """The bundle's index (format 2 or 3): every file's extents, objects in first-reference order."""
        objects: dict[str, PackObject] = {}
        files: list[FileEntry] = []
        for entry in entries:
            if entry.type != FILE:
                files.append(entry)
                continue
            file = self._files.get(entry.path)
            pieces: list[Chunk] = []
            for piece in file.pieces if file else []:
                obj = _object(piece.ref)
                objects.setdefault(obj.digest, obj)
                pieces.append(Chunk(piece.file_offset, piece.length, obj.digest, None, piece.object_offset))
            files.append(FileEntry(entry.path, FILE, entry.mode, entry.size, tuple(pieces)))
        return PackIndex(
            self.chunk_size,
            tuple(files),
            format=self.naming.format,
            block_size=self.block_size,
            objects=tuple(objects.values()),
        )

    def referenced_base(self) -> Iterator[str]:
        """Digests of the base objects the index points into (the catalog must confirm them)."""
        seen: set[str] = set()
        for file in self._files.values():
            for piece in file.pieces:
                if isinstance(piece.ref, PackObject) and piece.ref.digest not in seen:
                    seen.add(piece.ref.digest)
                    yield piece.ref.digest


def _object(ref: _Ref) -> PackObject:
    if isinstance(ref, PackObject):
        return PackObject(ref.digest, ref.size, ref.blocks)  # the stored size is the server's to say
    return PackObject(ref.digest, ref.size, b"".join(ref.blocks))

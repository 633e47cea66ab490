"""What an incremental push sends (client.transfer.extents): blocks the base holds at the same place
are reused, new ones are packed, a first push is format 1's grid, and old versions cannot fragment a
new one beyond the repack budget. Every index it builds must pass the server's parser."""

from __future__ import annotations

import random

from client.transfer.extents import REPACK_BUDGET, BaseMap, ExtentsBuilder, NewObject
from core.pack import FILE, FORMAT_BLAKE3, FileEntry, Naming, PackIndex

BS = 65536
NAMING = Naming(FORMAT_BLAKE3, BS)  # what a push asks for
CELL = 4 * BS
PATH = "vm.pvm/disk.hds"


def _rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class _Push:
    """Drives a builder as the push does: cells in order, whole cells and sealed packs collected."""

    def __init__(self, disk: bytes, base: PackIndex | None = None) -> None:
        self.disk = disk
        self.sent: dict[str, bytes] = {}
        self.builder = ExtentsBuilder(
            NAMING, CELL, BaseMap(base) if base else None, self._emit, lambda: bytearray(CELL)
        )
        entry = FileEntry(PATH, FILE, 0o644, len(disk))
        self.builder.file(entry)
        for offset in range(0, len(disk), CELL):
            cell = disk[offset : offset + CELL]
            if not cell.strip(b"\0"):
                continue  # the push never hands all-zero cells over
            whole = self.builder.cell(PATH, offset, memoryview(cell), NAMING.block_digests(cell))
            if whole is not None:
                self.sent[whole] = cell
        self.builder.finish()
        self.builder.repack(lambda path, offset, length: disk[offset : offset + length])
        self.index = PackIndex.from_bytes(self.builder.index([entry]).canonical_bytes())  # the server's rules

    def _emit(self, new: NewObject) -> None:
        self.sent[new.digest] = bytes(new.data)

    def rebuilt(self, objects: dict[str, bytes]) -> bytes:
        out = bytearray(len(self.disk))
        for piece in self.index.files[0].chunks:
            data = objects[piece.digest]
            out[piece.offset : piece.offset + piece.size] = data[piece.object_offset : piece.object_offset + piece.size]
        return bytes(out)


def test_a_first_push_is_the_grid_of_whole_cells() -> None:
    disk = _rnd(1, 2 * CELL) + bytes(CELL) + _rnd(2, CELL)[:BS] + bytes(BS) + b"tail"
    first = _Push(disk)
    assert [len(d) for d in first.sent.values()] == [CELL, CELL, 2 * BS + 4]  # zero blocks stay in the cell
    assert all(NAMING.digest(data) == d for d, data in first.sent.items())
    assert first.rebuilt(first.sent) == disk


def test_only_changed_blocks_are_sent_and_packed_in_file_order() -> None:
    v1 = _rnd(1, 8 * CELL)  # large enough that this change stays inside the repack budget
    first = _Push(v1)
    v2 = bytearray(v1)
    v2[BS : 2 * BS] = _rnd(3, BS)  # one block of cell 0
    v2[2 * CELL + 3 * BS : 3 * CELL + BS] = _rnd(4, 2 * BS)  # across cells 2 and 3
    v2[3 * CELL + 2 * BS : 3 * CELL + 3 * BS] = bytes(BS)  # zeros where data was: a hole
    second = _Push(bytes(v2), first.index)
    assert [len(d) for d in second.sent.values()] == [3 * BS]  # one packed object, nothing else
    assert second.rebuilt({**first.sent, **second.sent}) == bytes(v2)
    assert second.builder.reused_bytes == 8 * CELL - 4 * BS


def test_a_short_last_block_ends_its_object() -> None:
    v1 = _rnd(1, CELL + 1000)
    first = _Push(v1)
    v2 = bytearray(v1)
    v2[0:BS] = _rnd(5, BS)
    v2[-10:] = b"0123456789"
    second = _Push(bytes(v2), first.index)
    assert sorted(len(d) for d in second.sent.values()) == [1000, BS]
    assert second.rebuilt({**first.sent, **second.sent}) == bytes(v2)


def test_repacking_keeps_what_a_version_holds_alive_within_the_budget() -> None:
    objects = dict[str, bytes]()
    disk = bytearray(_rnd(1, 8 * CELL))
    push = _Push(bytes(disk))
    objects.update(push.sent)
    rng = random.Random(7)
    for version in range(12):  # change one block in most cells, every version
        for cell in range(8):
            block = rng.randrange(4)
            disk[cell * CELL + block * BS : cell * CELL + (block + 1) * BS] = _rnd(100 + version * 8 + cell, BS)
        push = _Push(bytes(disk), push.index)
        objects.update(push.sent)
        kept = sum(push.index.unique_digests().values())
        assert kept <= REPACK_BUDGET * push.index.data_size + CELL, (version, kept)
        assert push.rebuilt(objects) == bytes(disk)


def test_over_budget_the_least_used_base_object_is_sent_again() -> None:
    v1 = _rnd(1, 4 * CELL)
    first = _Push(v1)
    v2 = bytearray(v1)
    v2[BS : 2 * BS] = _rnd(3, BS)
    v2[2 * CELL : 2 * CELL + 2 * BS] = _rnd(4, 2 * BS)  # cell 2 keeps two of its four blocks
    v2[3 * CELL : 3 * CELL + 3 * BS] = _rnd(5, 3 * BS)  # cell 3 keeps one
    second = _Push(bytes(v2), first.index)
    # 16 base blocks kept + 6 new ones > 1.25 x 16 blocks of data: cell 3's last old block goes again
    assert [len(d) for d in second.sent.values()] == [4 * BS, 2 * BS, BS]
    assert first.index.files[0].chunks[3].digest not in second.index.unique_digests()
    assert second.rebuilt({**first.sent, **second.sent}) == bytes(v2)

"""Index formats 2 and 3 (docs/adr-004-incremental-chunking.md, docs/adr-005-blake3-object-names.md):
the parser refuses every hostile index by rule I1-I7, and an object's name is the root of its blocks
however its bytes arrive."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidInput
from core.pack import FORMAT_BLAKE3, FORMAT_EXTENTS, SHA256_CELLS, Naming, PackIndex

BS = 65536
N2, N3 = Naming(FORMAT_EXTENTS, BS), Naming(FORMAT_BLAKE3, BS)


def _object(data: bytes, naming: Naming = N2) -> dict[str, Any]:
    blocks = naming.block_digests(data)
    return {"digest": naming.root(blocks, len(data)), "size": len(data), "blocks": blocks.hex()}


A = random.Random(1).randbytes(2 * BS)
B = random.Random(2).randbytes(BS + 100)


def _index() -> dict[str, Any]:
    """A valid index: a disk of three blocks and a short tail, from two objects, and a folder."""
    return {
        "format": 2,
        "compression": "zstd",
        "chunk_size": 2 * BS,
        "block_size": BS,
        "size": 4 * BS + 100,
        "objects": [_object(A), _object(B)],
        "files": [
            {"path": "vm.pvm", "type": "dir", "mode": 0o755},
            {
                "path": "vm.pvm/disk.hds",
                "type": "file",
                "mode": 0o644,
                "size": 4 * BS + 100,
                "extents": [[0, 2 * BS, 0, 0], [3 * BS, BS + 100, 1, 0]],
            },
        ],
    }


def test_a_valid_index_round_trips() -> None:
    index = PackIndex.parse(_index())
    assert index.format == FORMAT_EXTENTS and index.block_size == BS
    assert index.unique_digests() == {_object(A)["digest"]: 2 * BS, _object(B)["digest"]: BS + 100}
    assert index.data_size == 3 * BS + 100  # what a pull writes: the extents
    again = PackIndex.from_bytes(index.canonical_bytes())
    assert again == index
    assert json.loads(index.canonical_bytes()) == _index()
    sized = index.with_stored_sizes({d: 7 for d in index.unique_digests()})
    assert sized.stored_size == 14 and PackIndex.parse(sized.to_json()).stored_size == 14


def _disk(doc: dict[str, Any]) -> dict[str, Any]:
    file: dict[str, Any] = doc["files"][1]
    return file


HOSTILE: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "unknown key": ("I1", lambda d: d.update(later=1)),
    "missing key": ("I1", lambda d: d.pop("objects")),
    "another compression": ("I1", lambda d: d.update(compression="gzip")),
    "odd block size": ("I2", lambda d: d.update(block_size=4096)),
    "grid not a multiple": ("I2", lambda d: d.update(chunk_size=BS + 4096)),
    "object too large": ("I3", lambda d: d.update(chunk_size=BS)),
    "upper-case digest": ("I3", lambda d: d["objects"][0].update(digest=d["objects"][0]["digest"].upper())),
    "duplicate object": ("I3", lambda d: d["objects"].append(dict(d["objects"][0]))),
    "blocks too short": ("I3", lambda d: d["objects"][0].update(blocks=d["objects"][0]["blocks"][:64])),
    "non-hex blocks": ("I3", lambda d: d["objects"][1].update(blocks="g" * 128)),
    "wrong root": ("I3", lambda d: d["objects"][0].update(digest=d["objects"][1]["digest"])),
    "bool size": ("I3", lambda d: d["objects"][0].update(size=True)),
    "zero stored size": ("I3", lambda d: d["objects"][0].update(stored_size=0)),
    "extra entry key": ("I4", lambda d: _disk(d).update(chunks=[])),
    "folder with size": ("I4", lambda d: d["files"][0].update(size=1)),
    "three numbers": ("I5", lambda d: _disk(d)["extents"][0].pop()),
    "negative offset": ("I5", lambda d: _disk(d)["extents"][0].__setitem__(0, -1)),
    "no such object": ("I5", lambda d: _disk(d)["extents"][1].__setitem__(2, 2)),
    "empty extent": ("I5", lambda d: _disk(d)["extents"][0].__setitem__(1, 0)),
    "past the file": ("I5", lambda d: _disk(d).update(size=3 * BS)),
    "past the object": ("I5", lambda d: _disk(d)["extents"][0].__setitem__(3, BS)),
    "unaligned in file": ("I5", lambda d: _disk(d)["extents"][1].__setitem__(0, 3 * BS - 100)),
    "partial block": ("I5", lambda d: _disk(d)["extents"][0].__setitem__(1, BS + 1)),
    "short block mid-file": ("I5", lambda d: _disk(d).update(size=6 * BS)),
    "overlap": ("I5", lambda d: _disk(d)["extents"][1].__setitem__(0, BS)),
    "out of order": (
        "I5",
        lambda d: _disk(d).update(extents=[[BS, BS, 0, BS], [0, BS, 0, 0], [3 * BS, BS + 100, 1, 0]]),
    ),
    "unreferenced object": ("I6", lambda d: d["objects"].append(_object(b"x" * 10))),
    "listed out of order": (
        "I6",
        lambda d: (d["objects"].reverse(), _disk(d).update(extents=[[0, 2 * BS, 1, 0], [3 * BS, BS + 100, 0, 0]])),
    ),
    "declared size": ("I4", lambda d: d.update(size=1)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_indexes_are_refused_by_rule(name: str) -> None:
    rule, mutate = HOSTILE[name]
    doc = copy.deepcopy(_index())
    mutate(doc)
    with pytest.raises(InvalidInput) as refused:
        PackIndex.parse(doc)
    if rule != "I4":  # I4 shares format 1's file rules and their messages
        assert refused.value.message.startswith(rule), refused.value.message


def test_a_pushed_index_of_another_format_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported pack format"):
        PackIndex.parse({**_index(), "format": 4})
    with pytest.raises(InvalidInput):
        PackIndex.parse({**_index(), "format": 2.0})  # a float is not format 2


def test_a_format_3_index_names_its_objects_with_blake3() -> None:
    doc = {**_index(), "format": 3, "objects": [_object(A, N3), _object(B, N3)]}
    index = PackIndex.parse(doc)
    assert index.format == FORMAT_BLAKE3 and index.naming == N3 and index.extents
    assert json.loads(index.canonical_bytes()) == doc
    assert index.matches(_object(A, N3)["digest"], A) and not index.matches(_object(A)["digest"], A)
    # the same objects under the other format's label are named by the wrong function: refused (I3)
    with pytest.raises(InvalidInput, match=r"I3: object .* is not named by the root of its blocks"):
        PackIndex.parse({**doc, "format": 2})
    with pytest.raises(InvalidInput, match=r"I3: object .* is not named by the root of its blocks"):
        PackIndex.parse({**_index(), "format": 3})


def test_the_blake3_root_is_the_one_the_adr_specifies() -> None:
    from blake3 import blake3

    data = A + B[:100]
    blocks = b"".join(blake3(data[i : i + BS]).digest() for i in range(0, len(data), BS))
    head = b"pdcat-object-v3\x00" + BS.to_bytes(8, "big") + len(data).to_bytes(8, "big")
    assert N3.digest(data) == blake3(head + blocks).hexdigest()
    assert N3.block_digests(data) == blocks


@given(st.binary(min_size=1, max_size=3 * BS), st.lists(st.integers(0, 3 * BS), max_size=5))
def test_the_name_does_not_depend_on_how_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    for naming in (SHA256_CELLS, N2, N3):
        hasher = naming.hasher()
        start = 0
        for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
            hasher.update(data[start:cut])
            start = cut
        assert hasher.hexdigest() == naming.digest(data)


def test_object_names_keep_the_formats_apart() -> None:
    names = {SHA256_CELLS.digest(A), N2.digest(A), N3.digest(A), Naming(FORMAT_EXTENTS, 2 * BS).digest(A)}
    assert len(names) == 4  # the function and the block size are part of the name
    assert Naming(FORMAT_BLAKE3, 2 * BS).digest(A) != N3.digest(A)


def test_a_naming_needs_a_block_size_exactly_in_the_block_formats() -> None:
    for bad in ((1, BS), (2, None), (3, None), (4, BS)):
        with pytest.raises(ValueError):
            Naming(*bad)

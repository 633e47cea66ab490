"""Index format 2 (docs/adr-004-incremental-chunking.md): the parser refuses every hostile index by
rule I1-I7, and an object's name is the root of its blocks however its bytes arrive."""

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
from core.pack import (
    FORMAT_EXTENTS,
    ContentHasher,
    PackIndex,
    block_digests,
    content_digest,
    object_root,
)

BS = 65536


def _object(data: bytes) -> dict[str, Any]:
    blocks = block_digests(data, BS)
    return {"digest": object_root(blocks, BS, len(data)), "size": len(data), "blocks": blocks.hex()}


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
        PackIndex.parse({**_index(), "format": 3})
    with pytest.raises(InvalidInput):
        PackIndex.parse({**_index(), "format": 2.0})  # a float is not format 2


@given(st.binary(min_size=1, max_size=3 * BS), st.lists(st.integers(0, 3 * BS), max_size=5))
def test_the_name_does_not_depend_on_how_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    for block_size in (None, BS):
        hasher = ContentHasher(block_size)
        start = 0
        for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
            hasher.update(data[start:cut])
            start = cut
        assert hasher.hexdigest() == content_digest(data, block_size)


def test_object_names_keep_the_two_formats_apart() -> None:
    assert content_digest(A, BS) != content_digest(A, None)
    assert content_digest(A, BS) != content_digest(A, 2 * BS)  # the block size is part of the name

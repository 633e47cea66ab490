"""Issue 14: what an incremental push and pull send under each way of cutting a bundle, measured.

    .venv/bin/python bench/incremental.py [--size-gib 3] [--seed 14] [--workdir DIR] [--keep]
                                          [--no-tools] [--chain 50] [--repack-budget 1.25]
                                          [--json PATH] [--report JSON] [--chain-only]

It builds the reference bundle with ``bench.bundle.make_bundle``: a 3 GiB sparse disk holding 1.5 GiB of
non-zero data (25% of the disk random bytes, 25% log-like text, 10% explicit zeros, the rest holes),
copies it twice and changes each copy the way a second version of a VM changes:

(a) *runs*: 5% of the non-zero data rewritten with random bytes, in runs of 1-16 MiB (uniform length)
    at random byte offsets;
(b) *scattered*: 1 MiB writes of random bytes at random 4 KiB-aligned offsets, 2% of the data in all.

Then, in this process, without a server or a network, it works out for every candidate what a push of
v1 and then of each v2 would send, what an incremental pull (v1 in the cache) and a cold pull of v2
would fetch, how many objects and index entries there are, and how fast the candidate cuts and hashes.
Byte counts are compressed bytes as pdcat sends them: each object is ``client.packer.compress`` (zstd
level 3, one frame) of its raw bytes, and the index is its canonical JSON compressed the same way.
The candidates:

1. ``grid 4 MiB``: today's format; the index is built exactly as ``client.packer.build_index`` builds it
   (checked against it on v1);
2. ``grid 1 MiB``, ``grid 2 MiB``: the same format on a finer grid;
3. ``extents B``: the format docs/adr-004 specifies. v1 is stored as today's 4 MiB cells; the index lists
   every object with the sha256 of each of its B-byte blocks, and each file as extents that may point
   into part of an object. A push compares block digests with the previous version's index, by
   position; a cell that changed wholly becomes one object as today, the other changed blocks are
   packed in file order into new objects of up to 4 MiB (``new_objects_of``). A cold pull fetches whole
   objects (superseded parts included), or, in the "frame per block, ranged GETs" rows, objects stored
   as one zstd frame per block and fetched with ranged GETs;
4. ``cdc A``: FastCDC (pyfastcdc) with an average of A, one object per chunk, and "packed": new chunks
   packed in order into objects of 4 MiB (compressed) or a little more, restic-style, pulled whole or
   with ranged GETs;
5. ``delta``: each changed 4 MiB cell sent as ``zstd -3 --patch-from=<old cell>`` (the zstd command).

casync (its default 64 KiB chunks, zstd) and restic (1 MiB average, packs, zstd) run for real on the
same trees when installed (``apt-get install -y casync restic``); ``--no-tools`` skips them. Their bytes
are the growth of the chunk store / repository when v2 is added to v1's. The ceiling is ``tar --sparse
-cf - | zstd -T0 -3 > /dev/null`` of v1. Last, a metadata-only simulation follows the extents format over
``--chain`` versions of the same kind of change, each pushed onto the one before (128 KiB blocks, raw
bytes), to show how fragmentation grows: with one object per changed run, with packing, and with packing
plus the repack budget of docs/adr-004 (``--repack-budget``).

Output: Markdown tables on stdout and everything in ``.bench/incremental.json`` (``--report JSON`` prints
the tables of a saved run again). Runs in ~5-10 minutes on 2 cores and needs ~8 GiB free in the work
folder. It needs ``pyfastcdc==0.3.1`` in .venv, for this benchmark only (pdcat does not use it). restic
draws a random chunker polynomial for every repository, so its figures move a little from run to run;
every other figure is deterministic from ``--seed`` except the speeds. Nothing here is product code.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import itertools
import json
import mmap
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bundle import GIB, MIB, RANDOM, REGION, TEXT, data_ranges, make_bundle, plan_regions  # noqa: E402
from client.packer import build_index, compress, scan_tree  # noqa: E402
from core.pack import DEFAULT_CHUNK_SIZE, FILE, Chunk, FileEntry, PackIndex  # noqa: E402

KIB = 1024
CELL = DEFAULT_CHUNK_SIZE  # 4 MiB: today's grid, and the largest object of every candidate but CDC
WORKERS = 2  # the machine the goal speaks of has 2 cores
MIX = {"random_frac": 0.25, "text_frac": 0.25, "zero_frac": 0.10}  # 1.5 GiB non-zero data in a 3 GiB disk
PER_100GB = 100 * 10**9
PACK_TARGET = 4 * MIB  # CDC packs are closed once they hold this many compressed bytes
RESULTS = REPO / ".bench" / "incremental.json"
BUNDLE_NAME = "Bench VM"
VARIANTS = {
    "a": {"label": "runs of 1-16 MiB, 5%", "fraction": 0.05, "min_len": MIB, "max_len": 16 * MIB, "align": 1},
    "b": {"label": "scattered 1 MiB, 2%", "fraction": 0.02, "min_len": MIB, "max_len": MIB, "align": 4 * KIB},
}
CHAIN_BLOCK = 128 * KIB  # the block size docs/adr-004 chooses
REPACK_BUDGET = 1.25  # a push keeps a whole-object cold pull of its version within this many times its data
SPEED_SAMPLE = GIB // 2  # speed is measured on the data in the first 512 MiB of the disk (and the small files)
OBJECT_DOMAIN = b"pdcat-object-v2\x00"  # the root an extents object is named by (docs/adr-004)

Span = tuple[str, int, int]  # (path inside the bundle, offset, length)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mib(n: float) -> str:
    return f"{n / MIB:,.2f}"


_ZERO_DIGESTS: dict[int, bytes] = {}


def zero_digest(n: int) -> bytes:
    found = _ZERO_DIGESTS.get(n)
    if found is None:
        found = _ZERO_DIGESTS[n] = hashlib.sha256(bytes(n)).digest()
    return found


def zstd_size(data: bytes) -> int:
    return len(compress(data))


def canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# ---- the bundle and its two second versions ----------------------------------------------------
@dataclass(frozen=True)
class FileData:
    rel: str
    size: int
    segments: tuple[tuple[int, int], ...]  # v1's data ranges; every version is read through them


class Tree:
    """One version of the bundle, read through read-only maps."""

    def __init__(self, name: str, root: Path, files: Sequence[FileData]) -> None:
        self.name, self.root, self.files = name, root, list(files)
        self._maps: dict[str, mmap.mmap] = {}
        self.views: dict[str, memoryview] = {}
        for f in self.files:
            if f.size:
                with open(root / f.rel, "rb") as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps[f.rel] = m
                self.views[f.rel] = memoryview(m)

    def read(self, span: Span) -> memoryview:
        rel, offset, length = span
        return self.views[rel][offset : offset + length]

    def close(self) -> None:
        for view in self.views.values():
            with contextlib.suppress(BufferError):
                view.release()
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a chunker still holds a view; the process ends soon
                m.close()


def nonzero_spans(size_gib: float, seed: int) -> list[tuple[int, int]]:
    """Where the disk holds non-zero data (random or text regions), adjacent regions merged."""
    spans: list[tuple[int, int]] = []
    for index, kind in plan_regions(size_gib, seed, **MIX).items():
        if kind not in (RANDOM, TEXT):
            continue
        start = index * REGION
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], start + REGION)
        else:
            spans.append((start, start + REGION))
    return spans


def plan_runs(
    spans: Sequence[tuple[int, int]], fraction: float, rng: random.Random, min_len: int, max_len: int, align: int
) -> list[tuple[int, int]]:
    """Non-overlapping ``(offset, length)`` writes inside ``spans``, placed uniformly, ``fraction`` of them in all."""
    total = sum(e - s for s, e in spans)
    starts = [s for s, _ in spans]
    cumulative = []
    acc = 0
    for s, e in spans:
        cumulative.append(acc)
        acc += e - s
    target = round(fraction * total)
    runs: list[tuple[int, int]] = []
    taken = 0
    tries = 0
    while taken < target:
        tries += 1
        if tries > 1_000_000:
            raise RuntimeError("could not place the writes; the data spans are too small")
        length = min(rng.randint(min_len, max_len), target - taken)
        x = rng.randrange(total)
        i = bisect.bisect_right(cumulative, x) - 1
        offset = starts[i] + (x - cumulative[i])
        offset -= offset % align
        if offset < spans[i][0] or offset + length > spans[i][1]:
            continue
        j = bisect.bisect_left(runs, (offset, 0))
        if j > 0 and runs[j - 1][0] + runs[j - 1][1] > offset:
            continue
        if j < len(runs) and runs[j][0] < offset + length:
            continue
        runs.insert(j, (offset, length))
        taken += length
    return runs


def build_trees(work: Path, size_gib: float, seed: int) -> tuple[list[Tree], dict[str, Any]]:
    started = time.monotonic()
    info = make_bundle(work / "v1", size_gib, seed, name=BUNDLE_NAME, **MIX)
    log(
        f"v1: {info.disk_size / GIB:.1f} GiB disk, {info.nonzero_bytes / GIB:.2f} GiB non-zero data, "
        f"{info.written_bytes / GIB:.2f} GiB written ({time.monotonic() - started:.0f} s)"
    )
    rel_disk = str(info.disk.relative_to(info.path))
    files = []
    for entry in scan_tree(info.path):
        if entry.type != FILE:
            continue
        segments = tuple(data_ranges(info.path / entry.path)) if entry.size else ()
        files.append(FileData(entry.path, entry.size, segments))
    spans = nonzero_spans(size_gib, seed)
    data = sum(e - s for s, e in spans)
    changes: dict[str, Any] = {}
    trees = [Tree("v1", info.path, files)]
    for name, spec in VARIANTS.items():
        started = time.monotonic()
        dest = work / f"v2{name}"
        dest.mkdir()
        subprocess.run(["cp", "-a", "--sparse=auto", str(info.path), str(dest)], check=True)
        rng = random.Random(f"incremental:{name}:{seed}")
        runs = plan_runs(spans, spec["fraction"], rng, spec["min_len"], spec["max_len"], spec["align"])
        fd = os.open(dest / f"{BUNDLE_NAME}.pvm" / rel_disk, os.O_WRONLY)
        try:
            for offset, length in runs:
                os.pwrite(fd, rng.randbytes(length), offset)
        finally:
            os.close(fd)
        changed = sum(n for _, n in runs)
        changes[name] = {
            "label": spec["label"],
            "writes": len(runs),
            "changed_bytes": changed,
            "share_of_data": changed / data,
            "runs": runs,
        }
        log(
            f"v2{name}: {spec['label']}: {len(runs)} writes, {mib(changed)} MiB changed "
            f"({100 * changed / data:.2f}% of the non-zero data, {time.monotonic() - started:.0f} s)"
        )
        trees.append(Tree(f"v2{name}", dest / f"{BUNDLE_NAME}.pvm", files))
    meta = {
        "disk_bytes": info.disk_size,
        "nonzero_bytes": info.nonzero_bytes,
        "written_bytes": info.written_bytes,
        "allocated_bytes": sum(e - s for f in files for s, e in f.segments),
        "nonzero_spans": spans,
        "disk": rel_disk,
        "changes": changes,
    }
    return trees, meta


# ---- hashing and compressing with two workers, timed -------------------------------------------
def _batches(spans: Sequence[Span], budget: int = 32 * MIB) -> Iterator[list[Span]]:
    batch: list[Span] = []
    size = 0
    for span in spans:
        batch.append(span)
        size += span[2]
        if size >= budget:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _pooled(tree: Tree, spans: Sequence[Span], fn: Callable[[memoryview], Any]) -> tuple[list[Any], float]:
    started = time.perf_counter()

    def work(batch: list[Span]) -> list[Any]:
        return [fn(tree.read(span)) for span in batch]

    with ThreadPoolExecutor(WORKERS) as pool:
        out = [x for part in pool.map(work, _batches(spans)) for x in part]
    return out, time.perf_counter() - started


def hash_spans(tree: Tree, spans: Sequence[Span]) -> tuple[list[bytes], float]:
    return _pooled(tree, spans, lambda view: hashlib.sha256(view).digest())


def compress_spans(tree: Tree, spans: Sequence[Span]) -> tuple[list[int], float]:
    return _pooled(tree, spans, lambda view: len(compress(view)))


def grid_spans(files: Iterable[FileData], size: int) -> list[Span]:
    """Cells of ``size`` bytes that intersect a file's data ranges (the cells ``data_cells`` reads)."""
    out: list[Span] = []
    for f in files:
        keep: list[int] = []
        for start, end in f.segments:
            first, last = start // size, (end - 1) // size
            if keep and keep[-1] >= first:
                first = keep[-1] + 1
            keep.extend(range(first, last + 1))
        out.extend((f.rel, k * size, min(size, f.size - k * size)) for k in keep)
    return out


def v2_digests(tree: Tree, pieces: Sequence[Span], d1: Sequence[bytes], meta: dict[str, Any]) -> list[bytes]:
    """v2's digests of ``pieces``: those that overlap a write are hashed again, the others are v1's.

    The bench wrote nothing else into the copy; ``run_grid(check=True)`` hashes v2 whole and asserts it.
    """
    runs = meta["changes"][tree.name[-1]]["runs"]
    starts = [offset for offset, _ in runs]
    todo = []
    for i, (rel, offset, length) in enumerate(pieces):
        if rel != meta["disk"]:
            continue
        j = bisect.bisect_right(starts, offset + length - 1) - 1  # the last write starting before the piece ends
        if j >= 0 and runs[j][0] + runs[j][1] > offset:
            todo.append(i)
    fresh, _ = hash_spans(tree, [pieces[i] for i in todo])
    out = list(d1)
    for i, d in zip(todo, fresh, strict=True):
        out[i] = d
    return out


def speed(nbytes: float, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def new_result(name: str, family: str) -> dict[str, Any]:
    return {"name": name, "family": family, "v1": {}, "a": {}, "b": {}}


# ---- 1 and 2: fixed grid, object = cell ---------------------------------------------------------
def run_grid(trees: list[Tree], size: int, meta: dict[str, Any], check: bool = False) -> dict[str, Any]:
    res = new_result(f"grid {size // MIB} MiB", "grid")
    entries = scan_tree(trees[0].root)
    spans = grid_spans(trees[0].files, size)
    stored: dict[str, int] = {}
    seen_v1: set[str] = set()
    cells_by_tree: dict[str, dict[tuple[str, int], str]] = {}
    d1: list[bytes] = []
    for tree in trees:
        if tree.name == "v1":
            digests = d1 = hash_spans(tree, spans)[0]
        else:
            digests = v2_digests(tree, spans, d1, meta)
            if check and hash_spans(tree, spans)[0] != digests:
                raise RuntimeError(f"{tree.name} differs from v1 outside the writes the bench made")
        chunks: dict[str, list[Chunk]] = {}
        cells: dict[tuple[str, int], str] = {}
        todo: list[Span] = []
        todo_digests: list[str] = []
        for span, raw in zip(spans, digests, strict=True):
            if raw == zero_digest(span[2]):
                continue
            hexd = raw.hex()
            chunks.setdefault(span[0], []).append(Chunk(span[1], span[2], hexd))
            cells[(span[0], span[1])] = hexd
            if hexd not in stored:
                stored[hexd] = -1
                todo.append(span)
                todo_digests.append(hexd)
        sizes, _ = compress_spans(tree, todo)
        stored.update(zip(todo_digests, sizes, strict=True))
        files = tuple(
            FileEntry(e.path, e.type, e.mode, e.size, tuple(chunks.get(e.path, ())), e.target) if e.type == FILE else e
            for e in entries
        )
        index = PackIndex(size, files)
        if check and tree.name == "v1":
            started = time.perf_counter()
            real = build_index(tree.root, size)
            res["build_index_MBps"] = speed(meta["allocated_bytes"], time.perf_counter() - started)
            if real.digest != index.digest:
                raise RuntimeError("the simulated grid index differs from client.packer.build_index's")
        body = index.with_stored_sizes(stored).canonical_bytes()
        unique = index.unique_digests()
        index_zst = zstd_size(body)
        cells_by_tree[tree.name] = cells
        if tree.name == "v1":
            seen_v1 = set(unique)
            res["v1"] = {
                "objects": len(unique),
                "data_bytes": sum(unique.values()),
                "push_bytes": sum(stored[d] for d in unique) + index_zst,
                "index_raw": len(body),
                "index_zst": index_zst,
                "index_entries": sum(1 for _ in index.chunks()),
            }
            continue
        new = [d for d in unique if d not in seen_v1]
        new_bytes = sum(stored[d] for d in new)
        res[tree.name[-1]] = {
            "push_bytes": new_bytes + index_zst,
            "new_objects": len(new),
            "new_raw_bytes": sum(unique[d] for d in new),
            "pull_incremental_bytes": new_bytes + index_zst,
            "cold_pull_bytes": sum(stored[d] for d in unique) + index_zst,
            "cold_pull_requests": len(unique),
            "index_raw": len(body),
            "index_zst": index_zst,
            "index_entries": sum(1 for _ in index.chunks()),
        }
    res["_cells"] = cells_by_tree
    res["_stored"] = stored
    return res


# ---- 3: extents over objects of up to 4 MiB, change detection on a block grid -------------------
def object_root(block_digests: Sequence[bytes], block: int) -> str:
    return hashlib.sha256(OBJECT_DOMAIN + block.to_bytes(8, "big") + b"".join(block_digests)).hexdigest()


@dataclass
class Obj:
    digest: str
    size: int
    blocks: list[bytes]
    stored: int  # one zstd frame
    frames: list[int]  # one zstd frame per block (the ranged variant)


def extents_index(
    entries: list[FileEntry], block: int, objects: list[Obj], extents: dict[str, list[list[int]]], frames: bool
) -> bytes:
    """The format-2 index of docs/adr-004 (with per-block frame sizes when ``frames``)."""

    def obj_json(o: Obj) -> dict[str, Any]:
        out: dict[str, Any] = {
            "digest": o.digest,
            "size": o.size,
            "stored_size": sum(o.frames) if frames else o.stored,
            "blocks": "".join(b.hex() for b in o.blocks),
        }
        if frames:
            out["frames"] = o.frames
        return out

    files = []
    for e in entries:
        doc: dict[str, Any] = {"path": e.path, "type": e.type, "mode": e.mode}
        if e.type == FILE:
            doc["size"] = e.size
            doc["extents"] = extents.get(e.path, [])
        files.append(doc)
    return canonical(
        {
            "format": 2,
            "compression": "zstd",
            "chunk_size": CELL,
            "block_size": block,
            "size": sum(e.size for e in entries if e.type == FILE),
            "objects": [obj_json(o) for o in objects],
            "files": files,
        }
    )


def run_extents(trees: list[Tree], block: int, grid4: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    res = new_result(f"extents {block // KIB} KiB", "extents")
    entries = scan_tree(trees[0].root)
    cells = grid_spans(trees[0].files, CELL)
    blocks: list[Span] = []
    cell_of: list[int] = []  # block -> index into cells
    for ci, (rel, offset, length) in enumerate(cells):
        for j in range(0, length, block):
            blocks.append((rel, offset + j, min(block, length - j)))
            cell_of.append(ci)

    # v1: one object per non-zero 4 MiB cell (today's cells, named by their block root)
    v1 = trees[0]
    d1, _ = hash_spans(v1, blocks)
    f1, _ = compress_spans(v1, blocks)
    stored4 = grid4["_stored"]
    cells4 = grid4["_cells"]["v1"]
    by_cell: dict[int, list[int]] = {}
    for bi, ci in enumerate(cell_of):
        by_cell.setdefault(ci, []).append(bi)
    objects: dict[str, Obj] = {}
    where: dict[int, tuple[str, int]] = {}  # block -> (object, offset in it), v1
    found: dict[bytes, tuple[str, int]] = {}  # block digest -> a v1 place holding it
    v1_objects: list[Obj] = []
    v1_extents: dict[str, list[list[int]]] = {}
    for ci, members in by_cell.items():
        rel, offset, length = cells[ci]
        if all(d1[b] == zero_digest(blocks[b][2]) for b in members):
            continue
        o = Obj(
            object_root([d1[b] for b in members], block),
            length,
            [d1[b] for b in members],
            stored4[cells4[(rel, offset)]],
            [f1[b] for b in members],
        )
        objects[o.digest] = o
        v1_objects.append(o)
        v1_extents.setdefault(rel, []).append([offset, length, len(v1_objects) - 1, 0])
        for b in members:
            where[b] = (o.digest, blocks[b][1] - offset)
            found.setdefault(d1[b], where[b])
    body = extents_index(entries, block, v1_objects, v1_extents, frames=False)
    body_frames = extents_index(entries, block, v1_objects, v1_extents, frames=True)
    res["v1"] = {
        "objects": len(v1_objects),
        "data_bytes": sum(o.size for o in v1_objects),
        "push_bytes": sum(o.stored for o in v1_objects) + zstd_size(body),
        "push_bytes_frames": sum(sum(o.frames) for o in v1_objects) + zstd_size(body_frames),
        "index_raw": len(body),
        "index_zst": zstd_size(body),
        "index_raw_frames": len(body_frames),
        "index_zst_frames": zstd_size(body_frames),
        "index_entries": sum(len(x) for x in v1_extents.values()),
        "block_digests": sum(len(o.blocks) for o in v1_objects),
    }
    res["frames_penalty"] = res["v1"]["push_bytes_frames"] / res["v1"]["push_bytes"]

    for tree in trees[1:]:
        d2 = v2_digests(tree, blocks, d1, meta)
        ref: list[tuple[str, int] | None] = [None] * len(blocks)
        upload: list[int] = []
        for b, digest in enumerate(d2):
            if b in where and d1[b] == digest:
                ref[b] = where[b]  # same place, same bytes: keep pointing at the old object
            elif digest == zero_digest(blocks[b][2]):
                continue  # a hole
            elif digest in found:
                ref[b] = found[digest]  # the same bytes elsewhere in v1
            else:
                upload.append(b)
        groups = new_objects_of(upload, d2, blocks, by_cell, cell_of, block)
        stored = compress_groups(tree, [[blocks[b] for b in g] for g in groups])
        frames, _ = compress_spans(tree, [blocks[b] for g in groups for b in g])
        new_objects: list[Obj] = []
        k = 0
        for g, one in zip(groups, stored, strict=True):
            o = Obj(
                object_root([d2[b] for b in g], block),
                sum(blocks[b][2] for b in g),
                [d2[b] for b in g],
                one,
                frames[k : k + len(g)],
            )
            k += len(g)
            new_objects.append(o)
            objects.setdefault(o.digest, o)
            offset = 0
            for b in g:
                ref[b] = (o.digest, offset)
                offset += blocks[b][2]
        # extents: maximal runs of blocks contiguous in the file and in one object
        extents: dict[str, list[list[int]]] = {}
        order: dict[str, int] = {}
        used_blocks: dict[str, set[int]] = {}
        last: list[int] | None = None
        last_key: tuple[str, str] | None = None
        for b, place in enumerate(ref):
            if place is None:
                last = None
                continue
            rel, offset, length = blocks[b]
            obj, obj_off = place
            number = order.setdefault(obj, len(order))
            used_blocks.setdefault(obj, set()).add(obj_off // block)
            if (
                last is not None
                and last_key == (rel, obj)
                and last[0] + last[1] == offset
                and last[3] + last[1] == obj_off
            ):
                last[1] += length
                continue
            last = [offset, length, number, obj_off]
            last_key = (rel, obj)
            extents.setdefault(rel, []).append(last)
        referenced = [objects[d] for d in order]
        body = extents_index(entries, block, referenced, extents, frames=False)
        body_frames = extents_index(entries, block, referenced, extents, frames=True)
        index_zst, index_zst_frames = zstd_size(body), zstd_size(body_frames)
        ranged_requests = 0
        ranged_bytes = 0
        for o in referenced:
            used = sorted(used_blocks[o.digest])
            ranged_requests += 1 + sum(1 for x, y in itertools.pairwise(used) if y != x + 1)
            ranged_bytes += sum(o.frames[i] for i in used)
        new_bytes = sum(o.stored for o in new_objects)
        new_frames = sum(sum(o.frames) for o in new_objects)
        fresh = grid4[tree.name[-1]]["cold_pull_bytes"]
        cold = sum(o.stored for o in referenced) + index_zst
        res[tree.name[-1]] = {
            "push_bytes": new_bytes + index_zst,
            "push_bytes_frames": new_frames + index_zst_frames,
            "new_objects": len(new_objects),
            "new_raw_bytes": sum(o.size for o in new_objects),
            "pull_incremental_bytes": new_bytes + index_zst,
            "cold_pull_bytes": cold,
            "cold_pull_requests": len(referenced),
            "cold_pull_superseded_bytes": cold - fresh,
            "cold_pull_ranged_bytes": ranged_bytes + index_zst_frames,
            "cold_pull_ranged_requests": ranged_requests,
            "index_raw": len(body),
            "index_zst": index_zst,
            "index_zst_frames": index_zst_frames,
            "index_entries": sum(len(x) for x in extents.values()),
            "block_digests": sum(len(o.blocks) for o in referenced),
        }
    return res


def new_objects_of(
    upload: Sequence[int],
    digests: Sequence[bytes],
    blocks: Sequence[Span],
    by_cell: dict[int, list[int]],
    cell_of: Sequence[int],
    block: int,
) -> list[list[int]]:
    """How a push groups the blocks it uploads into objects (docs/adr-004, "Push").

    A 4 MiB cell none of whose non-zero blocks can be taken from the base becomes one object holding the
    whole cell, zero blocks included: exactly today's chunk, so a cold push is today's push. The other
    uploaded blocks are packed in file order into objects of up to 4 MiB; a file's short last block ends the
    object it goes in, so every block of an object starts at a multiple of the block size.
    """
    todo = set(upload)
    whole: set[int] = set()
    groups: list[list[int]] = []
    for ci in sorted({cell_of[b] for b in upload}):
        members = by_cell[ci]
        if all(b in todo for b in members if digests[b] != zero_digest(blocks[b][2])):
            whole.add(ci)
            groups.append(members)
    current: list[int] = []
    size = 0
    for b in upload:
        if cell_of[b] in whole:
            continue
        if size + blocks[b][2] > CELL:
            groups.append(current)
            current, size = [], 0
        current.append(b)
        size += blocks[b][2]
        if blocks[b][2] < block:  # only a file's last block is short: it ends its object, blocks stay aligned
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def compress_groups(tree: Tree, groups: Sequence[Sequence[Span]]) -> list[int]:
    """Compressed size of each object made of the bytes of ``spans`` one after the other."""

    def one(group: Sequence[Span]) -> int:
        return len(compress(b"".join(tree.read(span) for span in group)))

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, groups))


# ---- 4: content-defined chunking, one object per chunk or packed ---------------------------------
def cdc_params(average: int) -> dict[str, int]:
    """pyfastcdc's mean chunk is ``avg_size + min_size``: aim the mean at ``average``, casync's 1:4 bounds."""
    return {"avg_size": average - average // 4, "min_size": average // 4, "max_size": average * 4}


def cdc_spans(tree: Tree, average: int) -> tuple[list[Span], float]:
    from pyfastcdc import FastCDC

    chunker = FastCDC(**cdc_params(average))
    started = time.perf_counter()
    out: list[Span] = []
    for f in tree.files:
        view = tree.views.get(f.rel)
        if view is None:
            continue
        for start, end in f.segments:
            part = view[start:end]
            out.extend((f.rel, start + c.offset, c.length) for c in chunker.cut_buf(part))
            with contextlib.suppress(BufferError):  # the chunker still holds it; dropped with the tree
                part.release()
    return out, time.perf_counter() - started


def pack(
    digests: Sequence[str], stored: dict[str, int], packs: list[list[str]], where: dict[str, tuple[int, int, int]]
) -> int:
    """Put ``digests`` (new chunks, in order) into new packs of ~PACK_TARGET compressed bytes; return how many.

    ``where[digest]`` = (pack number, byte offset in the pack, position in the pack).
    """
    before = len(packs)
    current: list[str] = []
    size = 0
    for d in digests:
        where[d] = (len(packs), size, len(current))
        current.append(d)
        size += stored[d]
        if size >= PACK_TARGET:
            packs.append(current)
            current, size = [], 0
    if current:
        packs.append(current)
    return len(packs) - before


def cdc_index(
    entries: list[FileEntry],
    average: int,
    chunks: dict[str, list[Span]],
    digests: dict[Span, str],
    stored: dict[str, int],
    packs: list[list[str]] | None,
    where: dict[str, tuple[int, int, int]],
) -> bytes:
    files = []
    for e in entries:
        doc: dict[str, Any] = {"path": e.path, "type": e.type, "mode": e.mode}
        if e.type == FILE:
            doc["size"] = e.size
            rows = []
            for span in chunks.get(e.path, []):
                d = digests[span]
                row: list[Any] = [span[1], span[2], d]
                if packs is not None:
                    row += list(where[d][:2])
                rows.append([*row, stored[d]])
            doc["chunks"] = rows
        files.append(doc)
    doc = {"format": "cdc", "average": average, "files": files}
    if packs is not None:
        doc["packs"] = [
            {"digest": hashlib.sha256("".join(p).encode()).hexdigest(), "stored_size": sum(stored[d] for d in p)}
            for p in packs
        ]
    return canonical(doc)


def run_cdc(trees: list[Tree], average: int, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    label = f"{average // MIB} MiB" if average >= MIB else f"{average // KIB} KiB"
    plain, packed = new_result(f"cdc {label}", "cdc"), new_result(f"cdc {label} packed", "cdc-packed")
    entries = scan_tree(trees[0].root)
    stored: dict[str, int] = {}
    packs: list[list[str]] = []
    where: dict[str, tuple[int, int, int]] = {}
    pack_size: list[int] = []
    v1_set: set[str] = set()
    for tree in trees:
        spans, _ = cdc_spans(tree, average)
        raw, _ = hash_spans(tree, spans)
        chunks: dict[str, list[Span]] = {}
        digests: dict[Span, str] = {}
        order: list[str] = []
        todo: list[Span] = []
        todo_d: list[str] = []
        for span, d in zip(spans, raw, strict=True):
            if d == zero_digest(span[2]):
                continue
            h = d.hex()
            chunks.setdefault(span[0], []).append(span)
            digests[span] = h
            if h not in stored:
                stored[h] = -1
                todo.append(span)
                todo_d.append(h)
            order.append(h)
        sizes, _ = compress_spans(tree, todo)
        stored.update(zip(todo_d, sizes, strict=True))
        unique = list(dict.fromkeys(order))
        new = [d for d in unique if d not in v1_set] if tree.name != "v1" else unique
        first_new_pack = len(packs)
        n_packs = pack(new, stored, packs, where)
        pack_size.extend(sum(stored[d] for d in p) for p in packs[first_new_pack:])
        body = cdc_index(entries, average, chunks, digests, stored, None, where)
        body_packed = cdc_index(entries, average, chunks, digests, stored, packs, where)
        zst, zst_packed = zstd_size(body), zstd_size(body_packed)
        new_bytes = sum(stored[d] for d in new)
        if tree.name == "v1":
            v1_set = set(unique)
            data = sum(s[2] for s in todo)
            common = {"data_bytes": data, "index_entries": len(order), "mean_chunk": data / max(1, len(unique))}
            plain["v1"] = {
                **common,
                "objects": len(unique),
                "push_bytes": new_bytes + zst,
                "index_raw": len(body),
                "index_zst": zst,
            }
            packed["v1"] = {
                **common,
                "objects": n_packs,
                "push_bytes": new_bytes + zst_packed,
                "index_raw": len(body_packed),
                "index_zst": zst_packed,
            }
            continue
        needed: dict[int, set[int]] = {}
        for d in unique:
            p, _, i = where[d]
            needed.setdefault(p, set()).add(i)
        ranged_requests = 0
        for members in needed.values():
            used = sorted(members)
            ranged_requests += 1 + sum(1 for x, y in itertools.pairwise(used) if y != x + 1)
        every = sum(stored[d] for d in unique)
        plain[tree.name[-1]] = {
            "push_bytes": new_bytes + zst,
            "new_objects": len(new),
            "pull_incremental_bytes": new_bytes + zst,
            "cold_pull_bytes": every + zst,
            "cold_pull_requests": len(unique),
            "index_raw": len(body),
            "index_zst": zst,
            "index_entries": len(order),
        }
        packed[tree.name[-1]] = {
            "push_bytes": new_bytes + zst_packed,
            "new_objects": n_packs,
            "pull_incremental_bytes": new_bytes + zst_packed,
            "cold_pull_bytes": sum(pack_size[p] for p in needed) + zst_packed,
            "cold_pull_requests": len(needed),
            "cold_pull_ranged_bytes": every + zst_packed,
            "cold_pull_ranged_requests": ranged_requests,
            "index_raw": len(body_packed),
            "index_zst": zst_packed,
            "index_entries": len(order),
        }
        # drop v2's packs again: the other variant is pushed onto v1 alone
        del packs[first_new_pack:]
        del pack_size[first_new_pack:]
        for d in new:
            where.pop(d, None)
    return plain, packed


# ---- 5: sub-chunk deltas (zstd --patch-from the old cell) -----------------------------------------
def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> float:
    """CPU seconds (user + system) the command and its children took."""
    before = _children_cpu()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return _children_cpu() - before


def run_delta(trees: list[Tree], grid4: dict[str, Any], work: Path) -> dict[str, Any]:
    res = new_result("delta (zstd --patch-from)", "delta")
    res["v1"] = dict(grid4["v1"])
    tmp = Path(tempfile.mkdtemp(prefix="delta-", dir=work))
    old_f, new_f, out_f, plain_f, back_f = (tmp / n for n in ("old", "new", "out", "plain", "back"))
    v1_cells = grid4["_cells"]["v1"]
    stored = grid4["_stored"]
    for tree in trees[1:]:
        cells = grid4["_cells"][tree.name]
        changed = [(key, v1_cells[key], d) for key, d in cells.items() if key in v1_cells and v1_cells[key] != d]
        delta_bytes = plain_bytes = 0
        cpu_delta = cpu_plain = cpu_apply = 0.0
        superseded = 0
        still_used = set(cells.values())
        for (rel, offset), old_d, _new_d in changed:
            length = min(CELL, next(f.size for f in trees[0].files if f.rel == rel) - offset)
            old_f.write_bytes(trees[0].read((rel, offset, length)))
            new_f.write_bytes(tree.read((rel, offset, length)))
            cpu_delta += _timed(["zstd", "-3", "-q", "-f", f"--patch-from={old_f}", str(new_f), "-o", str(out_f)])
            cpu_plain += _timed(["zstd", "-3", "-q", "-f", str(new_f), "-o", str(plain_f)])
            cpu_apply += _timed(["zstd", "-d", "-q", "-f", f"--patch-from={old_f}", str(out_f), "-o", str(back_f)])
            if back_f.read_bytes() != new_f.read_bytes():
                raise RuntimeError("zstd --patch-from did not round-trip")
            delta_bytes += out_f.stat().st_size
            plain_bytes += plain_f.stat().st_size
            if old_d not in still_used:
                superseded += stored[old_d]
        g = grid4[tree.name[-1]]
        other_new = g["push_bytes"] - g["index_zst"] - sum(stored[d] for _, _, d in changed)
        index = g["index_zst"] + 40 * len(changed)  # each delta names its base: ~64 hex characters, compressed
        res[tree.name[-1]] = {
            "push_bytes": delta_bytes + other_new + index,
            "new_objects": g["new_objects"],
            "pull_incremental_bytes": delta_bytes + other_new + index,
            "cold_pull_bytes": g["cold_pull_bytes"] - sum(stored[d] for _, _, d in changed) + delta_bytes + superseded,
            "cold_pull_requests": g["cold_pull_requests"] + len(changed),
            "index_zst": index,
            "index_entries": g["index_entries"],
            "changed_cells": len(changed),
            "delta_cpu_ms_per_cell": 1000 * cpu_delta / max(1, len(changed)),
            "plain_cpu_ms_per_cell": 1000 * cpu_plain / max(1, len(changed)),
            "apply_cpu_ms_per_cell": 1000 * cpu_apply / max(1, len(changed)),
            "plain_bytes_of_changed_cells": plain_bytes,
        }
    shutil.rmtree(tmp, ignore_errors=True)
    return res


# ---- how fast each candidate cuts, hashes and compresses (a cold push's CPU path) ----------------
SPEED_PLANS = {
    "grid 4 MiB": ("grid", CELL),
    "grid 2 MiB": ("grid", 2 * MIB),
    "grid 1 MiB": ("grid", MIB),
    "extents 128 KiB": ("extents", 128 * KIB),
    "extents 256 KiB": ("extents", 256 * KIB),
    "extents 512 KiB": ("extents", 512 * KIB),
    "cdc 64 KiB": ("cdc", 64 * KIB),
    "cdc 1 MiB": ("cdc", MIB),
    "cdc 2 MiB": ("cdc", 2 * MIB),
}


def measure_speed(v1: Tree, meta: dict[str, Any], rounds: int = 2) -> dict[str, dict[str, Any]]:
    """CPU cost of a cold push's path for each candidate: best of ``rounds``, candidates interleaved.

    On the small files and the first SPEED_SAMPLE bytes of the disk, every page mapped beforehand. Cut:
    CDC boundaries (one thread). Hash: sha256 of every piece the candidate digests (cells, blocks or
    chunks). Compress: zstd -3 of every non-zero object a cold push uploads (4 MiB cells for extents).
    Hash and compress run on two threads. CPU seconds are this process's (``time.process_time``, every
    thread), so other work on the machine hardly moves them; wall seconds are kept too.
    """
    files = [
        FileData(f.rel, f.size, tuple((s, min(e, SPEED_SAMPLE)) for s, e in f.segments if s < SPEED_SAMPLE))
        if f.rel == meta["disk"]
        else f
        for f in v1.files
    ]
    tree = Tree("sample", v1.root, files)
    alloc = sum(e - s for f in files for s, e in f.segments)
    try:
        hash_spans(tree, grid_spans(tree.files, CELL))  # map every page once: no page faults in what is timed
        best: dict[str, dict[str, float]] = {name: {} for name in SPEED_PLANS}
        for _ in range(rounds):
            for name, (kind, size) in SPEED_PLANS.items():
                started, cpu0 = time.perf_counter(), time.process_time()
                if kind == "cdc":
                    pieces, _ = cdc_spans(tree, size)
                elif kind == "grid":
                    pieces = grid_spans(tree.files, size)
                else:
                    cells = grid_spans(tree.files, CELL)
                    pieces = [(rel, off + j, min(size, n - j)) for rel, off, n in cells for j in range(0, n, size)]
                cpu1 = time.process_time()
                digests, _ = hash_spans(tree, pieces)
                cpu2 = time.process_time()
                if kind == "extents":
                    nonzero = {
                        (rel, off - off % CELL)
                        for (rel, off, n), d in zip(pieces, digests, strict=True)
                        if d != zero_digest(n)
                    }
                    objects = [c for c in grid_spans(tree.files, CELL) if (c[0], c[1]) in nonzero]
                else:
                    objects = [p for p, d in zip(pieces, digests, strict=True) if d != zero_digest(p[2])]
                cpu3 = time.process_time()
                compress_spans(tree, objects)
                cpu4 = time.process_time()
                wall = time.perf_counter() - started
                phases = {"cut": cpu1 - cpu0, "hash": cpu2 - cpu1, "compress": cpu4 - cpu3, "wall": wall}
                for key, value in phases.items():
                    best[name][key] = min(best[name].get(key, value), value)
                best[name]["data"] = sum(o[2] for o in objects)
    finally:
        tree.close()
    out: dict[str, dict[str, Any]] = {"_sample": {"allocated_bytes": alloc}}
    for name, b in best.items():
        cpu = b["cut"] + b["hash"] + b["compress"]
        out[name] = {
            "cut_hash_MB_per_cpu_s": speed(alloc, b["cut"] + b["hash"]),
            "compress_MB_per_cpu_s": speed(b["data"], b["compress"]),
            "cpu_s_per_GB": cpu / (alloc / 1e9),
            "wall_MBps": speed(alloc, b["wall"]),
        }
    return out


# ---- the real tools ----------------------------------------------------------------------------
def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def ceiling(tree: Tree, meta: dict[str, Any], rounds: int = 2) -> dict[str, Any]:
    """``tar --sparse -cf - | zstd -T0 -3 > /dev/null`` of v1: best wall and CPU (tar + zstd) of ``rounds``."""
    seconds = cpu = float("inf")
    script = 'set -o pipefail; tar --sparse -cf - -C "$1" "$2" | zstd -T0 -3 -q > /dev/null'
    for _ in range(rounds):
        started = time.perf_counter()
        cpu = min(cpu, _timed(["bash", "-c", script, "-", str(tree.root.parent), tree.root.name]))
        seconds = min(seconds, time.perf_counter() - started)
    alloc = meta["allocated_bytes"]
    return {"seconds": seconds, "MBps": speed(alloc, seconds), "cpu_s_per_GB": cpu / (alloc / 1e9)}


def run_casync(trees: list[Tree], work: Path) -> dict[str, Any]:
    store = work / "casync.castr"
    out: dict[str, Any] = {"name": "casync (real, 64 KiB)", "family": "tool"}
    started = time.perf_counter()
    subprocess.run(
        ["casync", "make", f"--store={store}", str(work / "v1.caidx"), str(trees[0].root)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    base = _files(store)
    out["v1"] = {
        "objects": len(base),
        "push_bytes": sum(base.values()),
        "index_raw": (work / "v1.caidx").stat().st_size,
        "seconds": seconds,
    }
    for tree in trees[1:]:
        caidx = work / f"{tree.name}.caidx"
        subprocess.run(
            ["casync", "make", f"--store={store}", str(caidx), str(tree.root)], check=True, stdout=subprocess.DEVNULL
        )
        now = _files(store)
        new = {k: v for k, v in now.items() if k not in base}
        out[tree.name[-1]] = {
            "store_growth": sum(new.values()),
            "new_objects": len(new),
            "index_raw": caidx.stat().st_size,
            "index_zst": zstd_size(caidx.read_bytes()),
            "push_bytes": sum(new.values()) + caidx.stat().st_size,
        }
        for k in new:
            (store / k).unlink()
    out["seconds_v1"] = seconds
    return out


def run_restic(trees: list[Tree], work: Path) -> dict[str, Any]:
    repo = work / "restic-repo"
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_CACHE_DIR": str(work / "rc"),
    }
    quiet = {"check": True, "env": env, "stdout": subprocess.DEVNULL}
    out: dict[str, Any] = {"name": "restic 0.14 (real)", "family": "tool"}
    subprocess.run(["restic", "init"], **quiet)
    started = time.perf_counter()
    subprocess.run(["restic", "backup", "--host", "bench", str(trees[0].root)], **quiet)
    seconds = time.perf_counter() - started
    base = _files(repo)
    out["v1"] = {
        "objects": sum(1 for k in base if k.startswith("data/")),
        "push_bytes": sum(base.values()),
        "seconds": seconds,
    }
    for tree in trees[1:]:
        subprocess.run(["restic", "backup", "--host", "bench", str(tree.root)], **quiet)
        now = _files(repo)
        new = {k: v for k, v in now.items() if k not in base}
        out[tree.name[-1]] = {
            "push_bytes": sum(new.values()),
            "pack_bytes": sum(v for k, v in new.items() if k.startswith("data/")),
            "new_objects": sum(1 for k in new if k.startswith("data/")),
            "index_raw": sum(v for k, v in new.items() if not k.startswith("data/")),
        }
        for k in new:
            (repo / k).unlink()
    out["seconds_v1"] = seconds
    return out


# ---- the extents format over many versions (metadata only) ---------------------------------------
def chain(
    spans: Sequence[tuple[int, int]],
    block: int,
    versions: int,
    variant: str,
    budget: float,
    seed: int,
    *,
    pack: bool = True,
) -> list[dict[str, Any]]:
    """Push v2..vN of one kind of change on the extents format, each onto the one before; raw bytes.

    New objects are formed as ``new_objects_of`` forms them (``pack=False``: one object per run of
    changed blocks inside a 4 MiB cell, as the extents design was first sketched). ``budget`` > 0: a push
    also re-uploads the blocks it still uses from its least-used old objects until a whole-object cold pull
    of the new version is at most ``budget`` times its data (docs/adr-004, "Repacking"). For comparison,
    today's grid: the 4 MiB cells a version touches, and a cold pull that fetches exactly the data.
    """
    spec = VARIANTS[variant]
    per = CELL // block
    positions = [p for s, e in spans for p in range(s // block, e // block)]
    loc = {p: (p // per, p % per) for p in positions}  # block -> (object, block inside it); v1 = cells
    size = Counter(p // per for p in positions)
    cells: dict[int, list[int]] = {}
    for p in positions:
        cells.setdefault(p // per, []).append(p)
    next_id = max(size) + 1
    n = len(positions)
    pushed = changed_total = grid_pushed = 0
    out = []
    for version in range(2, versions + 1):
        rng = random.Random(f"chain:{variant}:{seed}:{version}")
        runs = plan_runs(spans, spec["fraction"], rng, spec["min_len"], spec["max_len"], spec["align"])
        changed = {p for off, length in runs for p in range(off // block, (off + length - 1) // block + 1)}
        upload = set(changed)
        if budget:
            users: dict[int, list[int]] = {}
            for p in positions:
                if p not in changed:
                    users.setdefault(loc[p][0], []).append(p)
            cold = sum(size[o] for o in users) + len(changed)
            for o in sorted(users, key=lambda o: len(users[o]) / size[o]):
                if cold <= budget * n:
                    break
                upload.update(users[o])
                cold -= size[o] - len(users[o])
        groups: list[list[int]] = [cells[c] for c in sorted({p // per for p in upload}) if set(cells[c]) <= upload]
        whole = {g[0] // per for g in groups}
        current: list[int] = []
        for p in sorted(upload):
            if p // per in whole:
                continue
            if current and (len(current) == per if pack else (p != current[-1] + 1 or p // per != current[-1] // per)):
                groups.append(current)
                current = []
            current.append(p)
        if current:
            groups.append(current)
        for g in groups:
            for i, q in enumerate(g):
                loc[q] = (next_id, i)
            size[next_id] = len(g)
            next_id += 1
        referenced = {loc[p][0] for p in positions}
        extents = sum(1 for p in positions if not (p - 1 in loc and loc[p - 1] == (loc[p][0], loc[p][1] - 1)))
        changed_bytes = sum(length for _, length in runs)
        touched = {off // CELL + i for off, length in runs for i in range((off % CELL + length - 1) // CELL + 1)}
        pushed += len(upload) * block
        changed_total += changed_bytes
        grid_pushed += len(touched) * CELL
        out.append(
            {
                "version": version,
                "grid_push_over_changed": len(touched) * CELL / changed_bytes,
                "grid_cumulative": grid_pushed / changed_total,
                "push_over_changed": len(upload) * block / changed_bytes,
                "cumulative": pushed / changed_total,
                "cold_pull_over_data": sum(size[o] for o in referenced) / n,
                "objects_per_100GB": len(referenced) * PER_100GB / (n * block),
                "extents_per_100GB": extents * PER_100GB / (n * block),
            }
        )
    return out


# ---- the report --------------------------------------------------------------------------------
def tables(results: list[dict[str, Any]], meta: dict[str, Any], extra: dict[str, Any]) -> str:
    scale = PER_100GB / meta["nonzero_bytes"]
    ch = {v: meta["changes"][v]["changed_bytes"] for v in "ab"}
    speeds = extra.get("speed", {})
    ceil = extra.get("ceiling", {}).get("MBps")
    ceil_cpu = extra.get("ceiling", {}).get("cpu_s_per_GB")
    fresh = {v: next(r for r in results if r["name"] == "grid 4 MiB")[v]["cold_pull_bytes"] for v in "ab"}

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    def per(x: Any) -> str:
        return "-" if x is None else f"{x * scale:,.0f}"

    lines = [
        f"Bundle: {meta['disk_bytes'] / GIB:.1f} GiB disk, {meta['nonzero_bytes'] / GIB:.2f} GiB non-zero data "
        f"({meta['allocated_bytes'] / GIB:.2f} GiB allocated). Change (a) {meta['changes']['a']['label']}: "
        f"{meta['changes']['a']['writes']} writes, {mib(ch['a'])} MiB; change (b) {meta['changes']['b']['label']}: "
        f"{meta['changes']['b']['writes']} writes, {mib(ch['b'])} MiB.",
        "",
        "Bytes: push = new objects + the index, compressed, in MiB (an incremental pull with v1 in the cache "
        "fetches the same bytes); ÷ changed = push ÷ bytes written; cold pull ÷ fresh = a cold pull of v2 "
        "÷ a cold pull of v2 pushed fresh on today's grid.",
        "",
        "| candidate | (a) push | (a) ÷ changed | (a) cold pull ÷ fresh | (b) push | (b) ÷ changed "
        "| (b) cold pull ÷ fresh | cold-pull GETs /100 GB (a / b) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def bytes_row(r: dict[str, Any], variant: str = "") -> str:
        push = "push_bytes_frames" if variant == "frames" else "push_bytes"
        cold = "cold_pull_ranged_bytes" if variant in ("frames", "ranged") else "cold_pull_bytes"
        gets = "cold_pull_ranged_requests" if variant in ("frames", "ranged") else "cold_pull_requests"
        name = r["name"] + {"frames": ", frame per block, ranged GETs", "ranged": ", ranged GETs"}.get(variant, "")
        cells = [name]
        for v in "ab":
            x = r[v]
            cells += [mib(x[push]), f"{x[push] / ch[v]:.2f}", f(x.get(cold) and x[cold] / fresh[v], ".2f")]
        cells.append(f"{per(r['a'].get(gets))} / {per(r['b'].get(gets))}")
        return "| " + " | ".join(cells) + " |"

    for r in results:
        if r["family"] == "tool":
            continue
        lines.append(bytes_row(r))
        if r["family"] == "extents":
            lines.append(bytes_row(r, "frames"))
        if r["family"] == "cdc-packed":
            lines.append(bytes_row(r, "ranged"))
    for r in results:
        if r["family"] != "tool":
            continue
        a, b = r["a"], r["b"]
        if "store_growth" in a:
            lines.append(
                f"| {r['name']}: chunk store growth | {mib(a['store_growth'])} | {a['store_growth'] / ch['a']:.2f} | - "
                f"| {mib(b['store_growth'])} | {b['store_growth'] / ch['b']:.2f} | - | - |"
            )
            lines.append(
                f"| {r['name']}: store growth + its .caidx | {mib(a['push_bytes'])} | {a['push_bytes'] / ch['a']:.2f} "
                f"| - | {mib(b['push_bytes'])} | {b['push_bytes'] / ch['b']:.2f} | - | - |"
            )
        else:
            lines.append(
                f"| {r['name']}: repository growth | {mib(a['push_bytes'])} | {a['push_bytes'] / ch['a']:.2f} | - "
                f"| {mib(b['push_bytes'])} | {b['push_bytes'] / ch['b']:.2f} | - | - |"
            )

    lines += [
        "",
        "Scale and speed: objects and index per 100 GB of non-zero data (v1); +objects = objects one v2 adds; "
        "index entries = chunk entries, or extents (+ block digests). Speed: CPU cost of a cold push's "
        "cut + hash + compress (2 threads, best of 2) on the first 512 MiB of the disk; MB = 10^6 bytes of "
        "allocated data read; ceiling ÷ path > 1: the path costs less CPU per GB than "
        f"tar --sparse | zstd -T0 -3 ({f(ceil_cpu, '.2f')} CPU s/GB, {f(ceil, ',.0f')} MB/s wall).",
        "",
        "| candidate | objects /100 GB | +objects /100 GB (a / b) | index entries /100 GB | index /100 GB raw "
        "/ zst, MB | cut+hash MB per CPU s | compress MB per CPU s | push path CPU s/GB | ceiling ÷ path |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        v1, a, b = r["v1"], r["a"], r["b"]
        base = r["name"].removesuffix(" packed").split(" (")[0]
        sp = speeds.get(base, {})
        if r["family"] == "tool":
            objects = per(v1.get("objects"))
            index = f"- / {a['index_zst'] * scale / 1e6:,.1f} (caidx)" if "index_zst" in a else "-"
            lines.append(
                f"| {r['name']} | {objects} | {per(a['new_objects'])} / {per(b['new_objects'])} | - | {index} "
                f"| - | - | - | - |"
            )
            continue
        entries = per(v1.get("index_entries"))
        if "block_digests" in v1:
            entries += f" (+{per(v1['block_digests'])})"
        index = f"{v1['index_raw'] * scale / 1e6:,.1f} / {v1['index_zst'] * scale / 1e6:,.1f}"
        if "index_zst_frames" in v1:
            index += f" ({v1['index_zst_frames'] * scale / 1e6:,.1f} with frames)"
        path = sp.get("cpu_s_per_GB")
        lines.append(
            f"| {r['name']} | {per(v1.get('objects'))} | {per(a.get('new_objects'))} / {per(b.get('new_objects'))} "
            f"| {entries} | {index} | {f(sp.get('cut_hash_MB_per_cpu_s'), ',.0f')} "
            f"| {f(sp.get('compress_MB_per_cpu_s'), ',.0f')} | {f(path, '.2f')} "
            f"| {f(path and ceil_cpu and ceil_cpu / path, '.2f')} |"
        )
    frames = [r for r in results if r["family"] == "extents"]
    if frames:
        lines.append("")
        lines.append(
            "One zstd frame per block instead of one per 4 MiB object costs, on v1: "
            + ", ".join(f"{r['name']} {100 * (r['frames_penalty'] - 1):+.1f}%" for r in frames)
            + " compressed bytes."
        )
    delta = next((r for r in results if r["family"] == "delta"), None)
    if delta:
        lines += [
            "",
            "Sub-chunk deltas (zstd -3 --patch-from=<old 4 MiB cell>, the zstd command, CPU per changed cell):",
            "",
            "| change | changed cells | delta push | plain zstd of the same cells | delta CPU ms/cell "
            "| plain CPU ms/cell | apply CPU ms/cell |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for v in "ab":
            d = delta[v]
            cpu = " | ".join(
                f"{d[k]:.1f}" for k in ("delta_cpu_ms_per_cell", "plain_cpu_ms_per_cell", "apply_cpu_ms_per_cell")
            )
            lines.append(
                f"| ({v}) | {d['changed_cells']} | {mib(d['push_bytes'])} MiB "
                f"| {mib(d['plain_bytes_of_changed_cells'])} MiB | {cpu} |"
            )
    lines += chain_tables(extra)
    return "\n".join(lines)


def chain_tables(extra: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    chains = extra.get("chain", {})
    for variant in "ab":
        runs, plain, budget = (chains.get(f"{variant}/{k}") for k in ("runs", "none", "budget"))
        if not runs or not plain or not budget:
            continue
        lines += [
            "",
            f"Over many versions: change ({variant}) every version, each pushed onto the one before; extents with "
            f"{extra['chain_block'] // KIB} KiB blocks; raw bytes, metadata only. Push ÷ changed: this version "
            "(all versions so far); cold pull ÷ data: a whole-object cold pull of this version; extents = "
            "ranged GETs a cold pull would need instead. One object per run: new objects not packed.",
            "",
            "| version | grid 4 MiB: push ÷ changed | one object per run: cold pull ÷ data | objects /100 GB "
            "| extents: push ÷ changed | cold pull ÷ data | objects /100 GB | extents /100 GB "
            f"| + repack to {extra['chain_budget']:.2f}: push ÷ changed | cold pull ÷ data | objects /100 GB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for u, c, r in zip(runs, plain, budget, strict=True):
            if c["version"] in (2, 3, 5, 10, 20, 30, 50, 100) or c is plain[-1]:
                lines.append(
                    f"| {c['version']} | {c['grid_push_over_changed']:.2f} ({c['grid_cumulative']:.2f}) "
                    f"| {u['cold_pull_over_data']:.2f} | {u['objects_per_100GB']:,.0f} "
                    f"| {c['push_over_changed']:.2f} ({c['cumulative']:.2f}) | {c['cold_pull_over_data']:.2f} "
                    f"| {c['objects_per_100GB']:,.0f} | {c['extents_per_100GB']:,.0f} "
                    f"| {r['push_over_changed']:.2f} ({r['cumulative']:.2f}) | {r['cold_pull_over_data']:.2f} "
                    f"| {r['objects_per_100GB']:,.0f} |"
                )
    return lines


def run_chains(spans: Sequence[tuple[int, int]], versions: int, budget: float, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"chain": {}, "chain_block": CHAIN_BLOCK, "chain_budget": budget}
    policies = (("runs", 0.0, False), ("none", 0.0, True), ("budget", budget, True))
    for variant in "ab":
        for policy, repack, pack in policies:
            out["chain"][f"{variant}/{policy}"] = chain(spans, CHAIN_BLOCK, versions, variant, repack, seed, pack=pack)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-tools", action="store_true", help="skip casync and restic")
    parser.add_argument("--chain", type=int, default=50, help="versions in the extents chain simulation (0: none)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--repack-budget", type=float, default=REPACK_BUDGET, help="of the chain simulation")
    parser.add_argument("--report", type=Path, help="only print the tables of an earlier run's JSON")
    parser.add_argument("--chain-only", action="store_true", help="only the chain simulation (seconds, no files)")
    args = parser.parse_args(argv)
    if args.report:
        doc = json.loads(args.report.read_text())
        print(tables(doc["results"], doc["meta"], doc["extra"]))
        return 0
    if args.chain_only:
        spans = nonzero_spans(args.size_gib, args.seed)
        print("\n".join(chain_tables(run_chains(spans, max(2, args.chain), args.repack_budget, args.seed))))
        return 0
    for tool in ("cp", "tar", "zstd"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: apt-get install -y {tool}", file=sys.stderr)
            return 2
    try:
        import pyfastcdc  # noqa: F401  (the bench's only extra dependency; pdcat itself does not use it)
    except ImportError:
        print("missing pyfastcdc: .venv/bin/pip install pyfastcdc==0.3.1 (for this benchmark only)", file=sys.stderr)
        return 2
    wall = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pdcat-incremental-", dir=args.workdir))
    trees: list[Tree] = []
    try:
        trees, meta = build_trees(work, args.size_gib, args.seed)
        extra: dict[str, Any] = {"ceiling": ceiling(trees[0], meta)}
        log(
            f"ceiling: tar --sparse | zstd -T0 -3: {extra['ceiling']['MBps']:,.0f} MB/s, "
            f"{extra['ceiling']['cpu_s_per_GB']:.2f} CPU s/GB"
        )
        extra["speed"] = measure_speed(trees[0], meta)
        log("speed: " + ", ".join(f"{k} {v['cpu_s_per_GB']:.2f}" for k, v in extra["speed"].items() if k[0] != "_"))
        results: list[dict[str, Any]] = []
        grid4 = run_grid(trees, CELL, meta, check=True)
        log(f"grid 4 MiB done (same index as client.packer.build_index, {grid4['build_index_MBps']:,.0f} MB/s)")
        results.append(grid4)
        for size in (2 * MIB, MIB):
            results.append(run_grid(trees, size, meta))
            log(f"grid {size // MIB} MiB done")
        for block in (128 * KIB, 256 * KIB, 512 * KIB):
            results.append(run_extents(trees, block, grid4, meta))
            log(f"extents {block // KIB} KiB done")
        for average in (64 * KIB, MIB, 2 * MIB):
            results.extend(run_cdc(trees, average, meta))
            log(f"cdc {average // KIB} KiB done")
        results.append(run_delta(trees, grid4, work))
        log("delta done")
        if not args.no_tools:
            for tool, run in (("casync", run_casync), ("restic", run_restic)):
                if shutil.which(tool):
                    results.append(run(trees, work))
                    log(f"{tool} done")
                else:
                    log(f"{tool} missing (apt-get install -y {tool}): skipped")
        if args.chain > 1:
            extra.update(run_chains(meta["nonzero_spans"], args.chain, args.repack_budget, args.seed))
            log("chains done")
        for r in results:
            for key in [k for k in r if k.startswith("_")]:
                del r[key]
        report = tables(results, meta, extra)
        print()
        print(report)
        seconds = time.monotonic() - wall
        print(f"\nwall time: {seconds:.0f} s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "results": results, "extra": extra, "wall_seconds": seconds, "table": report}
        args.json.write_text(json.dumps(doc, indent=1, default=str))
        return 0
    finally:
        for tree in trees:
            tree.close()
        if args.keep:
            print(f"kept {work}")
        else:
            started = time.monotonic()
            shutil.rmtree(work, ignore_errors=True)
            log(f"removed the work folder ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    raise SystemExit(main())

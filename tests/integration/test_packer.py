"""client.packer on a real filesystem: pack then unpack is the identity, holes stay holes, and
nothing an index or a tree holds can make a read or a write leave its folder.

These tests touch the disk on purpose (sparse files, fifos, symlinks are filesystem behaviour);
each hypothesis example gets its own temporary folder.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from client.packer import (
    CellRef,
    ChunkCorrupt,
    build_index,
    compress,
    data_cells,
    decompress,
    finalize_tree,
    is_zero,
    looks_incompressible,
    prepare_tree,
    read_cell,
    scan_tree,
    unpack_from,
    write_chunk,
)
from core.chunk_check import compressed_bound
from core.errors import InvalidInput, Unprocessable
from core.pack import SHA256_CELLS, Chunk, FileEntry, PackIndex

KiB, MiB = 1024, 1024 * 1024


# ---- helpers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSpec:
    segments: tuple[tuple[str, Any], ...]  # ("data", bytes) | ("zeros", n) | ("hole", n)
    mode: int


@dataclass(frozen=True)
class LinkSpec:
    ups: int  # how many "../" (clamped to the link's depth, so it never leaves the tree)
    name: str


@dataclass(frozen=True)
class DirSpec:
    children: dict[str, Any]
    mode: int


def write_file(path: Path, segments: tuple[tuple[str, Any], ...]) -> None:
    with open(path, "wb") as f:
        for kind, value in segments:
            if kind == "data":
                f.write(value)
            elif kind == "zeros":
                f.write(bytes(value))
            else:  # a real hole: seek past what was written, the filesystem allocates nothing
                f.seek(value, os.SEEK_CUR)
        f.truncate(f.tell())


def write_tree(base: Path, children: dict[str, Any], depth: int = 0) -> None:
    for name, node in children.items():
        path = base / name
        if isinstance(node, FileSpec):
            write_file(path, node.segments)
            os.chmod(path, node.mode)
        elif isinstance(node, LinkSpec):
            os.symlink("../" * min(node.ups, depth) + node.name, path)
        else:
            path.mkdir()
            write_tree(path, node.children, depth + 1)
            os.chmod(path, node.mode)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything unpack must reproduce: kinds, modes, bytes, link targets."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st_.st_mode), path.read_bytes())
    return out


def store_of(root: Path, index: PackIndex) -> dict[str, bytes]:
    """What a catalog would hold: each unique chunk once, compressed."""
    store: dict[str, bytes] = {}
    for entry in index.files:
        for chunk in entry.chunks:
            if chunk.digest not in store:
                store[chunk.digest] = compress(read_cell(root / entry.path, chunk.offset, chunk.size))
    return store


def fetcher(store: dict[str, bytes]) -> Any:
    return lambda chunk: decompress(store[chunk.digest], chunk.digest, chunk.size)


def sparse_supported(path: Path) -> bool:
    """Whether this filesystem keeps holes and reports them (tmpfs and ext4 do)."""
    probe = path / ".probe"
    with open(probe, "wb") as f:
        f.truncate(4 * MiB)
    try:
        fd = os.open(probe, os.O_RDONLY)
        try:
            os.lseek(fd, 0, os.SEEK_DATA)
        except OSError:
            return os.stat(probe).st_blocks == 0
        finally:
            os.close(fd)
        return False
    finally:
        probe.unlink()


@pytest.fixture
def sparse_tmp(tmp_path: Path) -> Path:
    if not sparse_supported(tmp_path):
        pytest.skip("the temporary filesystem does not report holes")
    return tmp_path


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pdcat-") as tmp:
        yield Path(tmp)


# ---- strategies -------------------------------------------------------------------------------
names = st.sampled_from(["a", "b", "disk.hdd", "d e", "ü.txt"])
segments = st.one_of(
    st.tuples(st.just("data"), st.binary(min_size=1, max_size=20_000)),
    st.tuples(st.just("data"), st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 4000))),
    st.tuples(st.just("zeros"), st.integers(1, 70_000)),
    st.tuples(st.just("hole"), st.integers(1, 70_000)),
)
files = st.builds(
    FileSpec,
    st.lists(segments, max_size=4).map(tuple),
    st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o640]),
)
links = st.builds(LinkSpec, st.integers(0, 3), st.sampled_from(["a", "b", "disk.hdd", ".", "missing"]))
trees = st.recursive(
    st.one_of(files, files, links),
    lambda inner: st.builds(
        DirSpec, st.dictionaries(names, inner, max_size=3), st.sampled_from([0o755, 0o700, 0o555, 0o750, 0o1777])
    ),
    max_leaves=8,
)
roots = st.dictionaries(names, trees, max_size=4)
chunk_sizes = st.sampled_from([4096, 8192, 12288, 16384, 65536])


# ---- the round trip ---------------------------------------------------------------------------
EVERYTHING = {
    "disk.hdd": FileSpec(
        (("hole", 70_000), ("data", os.urandom(5000)), ("zeros", 70_000), ("data", b"ab" * 3000), ("hole", 9000)),
        0o644,
    ),
    "a": DirSpec({"b": DirSpec({"a": FileSpec((), 0o600), "b": LinkSpec(2, "disk.hdd")}, 0o555)}, 0o750),
    "b": LinkSpec(0, "a"),
    "d e": DirSpec({}, 0o700),
}


def features(tree: dict[str, Any]) -> Iterator[str]:
    for node in tree.values():
        if isinstance(node, DirSpec):
            yield "nested folder"
            yield from features(node.children)
        elif isinstance(node, LinkSpec):
            yield "symlink"
        elif not node.segments:
            yield "empty file"
        else:
            yield from (kind for kind, _ in node.segments)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=roots, chunk_size=chunk_sizes, workers=st.integers(1, 4))
@example(tree=EVERYTHING, chunk_size=4096, workers=2)
@example(tree=EVERYTHING, chunk_size=65536, workers=1)
def test_pack_then_unpack_is_the_identity(tree: dict[str, Any], chunk_size: int, workers: int) -> None:
    for feature in set(features(tree)):
        event(feature)
    with tempfile.TemporaryDirectory(prefix="pdcat-") as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.mkdir()
        write_tree(src, tree)
        progress: list[int] = []
        index = build_index(src, chunk_size, workers=workers, on_progress=progress.append)

        assert sum(progress) == index.size
        for entry in index.files:
            for chunk in entry.chunks:
                raw = read_cell(src / entry.path, chunk.offset, chunk.size)
                assert not is_zero(raw) and SHA256_CELLS.digest(raw) == chunk.digest
        store = store_of(src, index)
        sized = index.with_stored_sizes({d: len(b) for d, b in store.items()})
        wire = PackIndex.from_bytes(sized.canonical_bytes())
        assert wire == sized and wire.digest == sized.digest

        unpack_from(wire, dst, fetcher(store))
        assert snapshot(dst) == snapshot(src)


def test_zero_runs_and_holes_are_never_chunks(scratch: Path) -> None:
    write_file(scratch / "disk", (("hole", MiB), ("data", b"\x01" * 4096), ("zeros", MiB)))
    for chunk_size in (4096, 65536, MiB):
        (entry,) = build_index(scratch, chunk_size).files
        assert [(c.offset, c.size) for c in entry.chunks] == [(MiB, chunk_size)]


def test_identical_content_is_one_digest(scratch: Path) -> None:
    blob = os.urandom(3 * 8192 + 100)
    (scratch / "one").write_bytes(blob)
    (scratch / "sub").mkdir()
    (scratch / "sub" / "two").write_bytes(blob)
    index = build_index(scratch, 8192)
    one, _sub, two = index.files
    assert [c.digest for c in one.chunks] == [c.digest for c in two.chunks]
    assert len(index.unique_digests()) == 4
    assert index.data_size == len(blob)


def test_a_digest_in_several_places_is_written_in_each(scratch: Path) -> None:
    cell = os.urandom(4096)
    write_file(scratch / "src", (("data", cell), ("hole", 8192), ("data", cell)))
    index = build_index(scratch, 4096)
    fetched: list[Chunk] = []
    store = store_of(scratch, index)

    def fetch(chunk: Chunk) -> bytes:
        fetched.append(chunk)
        return decompress(store[chunk.digest], chunk.digest, chunk.size)

    unpack_from(index, scratch / "out", fetch)
    assert len(store) == 1 and len(fetched) == 2
    assert (scratch / "out" / "src").read_bytes() == (scratch / "src").read_bytes()


def test_index_is_deterministic_and_ordered(scratch: Path) -> None:
    write_tree(scratch, {"b": FileSpec((("data", b"x" * 9000),), 0o644), "a": DirSpec({"z": LinkSpec(1, "b")}, 0o755)})
    one, four = build_index(scratch, 4096, workers=1), build_index(scratch, 4096, workers=4)
    assert one == four
    assert [f.path for f in one.files] == ["a", "a/z", "b"]


def test_chunk_size_off_the_grid_is_refused(scratch: Path) -> None:
    for bad in (0, 1000, 4096 + 1, 2 * 1024 * MiB):
        with pytest.raises(InvalidInput, match="chunk_size"):
            build_index(scratch, bad)


# ---- sparse files -----------------------------------------------------------------------------
def test_data_cells_skip_hole_cells(sparse_tmp: Path) -> None:
    path = sparse_tmp / "sparse"
    write_file(path, (("hole", MiB), ("data", b"\x07" * 4096), ("hole", 2 * MiB)))
    assert data_cells(path, path.stat().st_size, 65536) == [(MiB, 65536)]
    assert data_cells(path, path.stat().st_size, 4096) == [(MiB, 4096)]


def test_data_cells_of_an_all_hole_or_empty_file(sparse_tmp: Path) -> None:
    write_file(sparse_tmp / "holes", (("hole", 3 * MiB),))
    (sparse_tmp / "empty").touch()
    assert data_cells(sparse_tmp / "holes", 3 * MiB, 4096) == []
    assert data_cells(sparse_tmp / "empty", 0, 4096) == []


def test_data_cells_cover_a_dense_file_and_its_short_tail(scratch: Path) -> None:
    (scratch / "dense").write_bytes(b"\x01" * 10_000)
    assert data_cells(scratch / "dense", 10_000, 4096) == [(0, 4096), (4096, 4096), (8192, 1808)]


def test_holes_stay_holes_after_unpack(sparse_tmp: Path) -> None:
    src, dst = sparse_tmp / "src", sparse_tmp / "dst"
    src.mkdir()
    with open(src / "disk.hds", "wb") as f:
        f.truncate(64 * MiB)
        os.pwrite(f.fileno(), os.urandom(4096), 40 * MiB + 8192)
    index = build_index(src, MiB)
    assert [(c.offset, c.size) for c in index.files[0].chunks] == [(40 * MiB, MiB)]
    unpack_from(index, dst, fetcher(store_of(src, index)))
    out = dst / "disk.hds"
    assert out.stat().st_size == 64 * MiB
    assert out.stat().st_blocks * 512 <= 64 * KiB  # the zero blocks around the data stay holes too
    assert out.read_bytes() == (src / "disk.hds").read_bytes()


# ---- chunk integrity --------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=1, max_size=3000), where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_a_flipped_byte_never_yields_wrong_bytes(raw: bytes, where: float, xor: int) -> None:
    """A flip either raises ChunkCorrupt or is in a bit zstd ignores (the frame header's unused bit,
    some redundant entropy-table encodings) and decodes to the very same bytes: never anything else."""
    blob = bytearray(compress(raw))
    blob[int(where * len(blob))] ^= xor
    try:
        out = decompress(bytes(blob), SHA256_CELLS.digest(raw), len(raw))
    except ChunkCorrupt:
        return
    assert out == raw


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=1, max_size=3000), where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_a_flipped_byte_in_an_incompressible_chunk_is_always_caught(raw: bytes, where: float, xor: int) -> None:
    raw = raw + os.urandom(2048)  # stored as a raw block: every payload byte is a content byte
    blob = bytearray(compress(raw))
    position = int(where * len(blob))
    if position == 4 and xor == 0x10:  # the frame header's "unused" bit: ignored by every decoder
        return
    blob[position] ^= xor
    with pytest.raises(ChunkCorrupt, match=SHA256_CELLS.digest(raw)[:12]):
        decompress(bytes(blob), SHA256_CELLS.digest(raw), len(raw))


def test_wrong_digest_size_or_garbage_is_corrupt() -> None:
    raw = os.urandom(5000)
    blob = compress(raw)
    assert decompress(blob, SHA256_CELLS.digest(raw), len(raw)) == raw
    other = SHA256_CELLS.digest(b"other")
    for args, why in (
        ((blob, other, len(raw)), "digest"),
        ((blob, SHA256_CELLS.digest(raw), len(raw) - 1), "declares"),
        ((b"not zstd at all", SHA256_CELLS.digest(raw), len(raw)), "not a zstd frame"),
        ((blob[:-10], SHA256_CELLS.digest(raw), len(raw)), "corrupt"),
        ((blob + compress(b"tail"), SHA256_CELLS.digest(raw), len(raw)), "corrupt"),
    ):
        with pytest.raises(ChunkCorrupt, match=why) as caught:
            decompress(*args)
        assert args[1][:12] in caught.value.message
    assert issubclass(ChunkCorrupt, Unprocessable)


def test_a_frame_claiming_more_than_the_index_is_refused_before_allocating() -> None:
    bomb = compress(bytes(64 * MiB))  # a few KiB that would unpack to 64 MiB
    with pytest.raises(ChunkCorrupt, match="declares"):
        decompress(bomb, SHA256_CELLS.digest(b"x"), 4096)


def test_a_frame_without_content_size_is_bounded_by_the_index() -> None:
    import zstandard

    raw = os.urandom(3000)
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    assert decompress(blob, SHA256_CELLS.digest(raw), len(raw)) == raw
    with pytest.raises(ChunkCorrupt):
        decompress(blob, SHA256_CELLS.digest(raw), 1000)


def test_compress_writes_the_content_size() -> None:
    import zstandard

    assert zstandard.frame_content_size(compress(b"abc" * 1000)) == 3000


def test_only_a_cell_incompressible_everywhere_skips_the_slow_level() -> None:
    """Random bytes (already compressed, encrypted) take the fast level; text anywhere in a cell
    keeps level 3, and so do small pieces; either way the frame holds the bytes exactly."""
    rng = __import__("random").Random(7)
    noise = rng.randbytes(4 * 1024 * 1024)
    text = b"".join(b"%08d GET /api/v1/catalog 200 %d ms\n" % (i, i % 97) for i in range(150_000))[: len(noise)]
    mixed = bytearray(noise)
    mixed[3 * 1024 * 1024 : 3 * 1024 * 1024 + 600_000] = text[:600_000]  # one compressible stretch
    assert looks_incompressible(noise) and looks_incompressible(memoryview(noise))
    assert not looks_incompressible(text) and not looks_incompressible(bytes(mixed))
    assert not looks_incompressible(noise[:60_000])  # below the sampled size: compressed as usual
    for raw in (noise, text, bytes(mixed)):
        blob = compress(raw)
        assert decompress(blob, SHA256_CELLS.digest(raw), len(raw)) == raw
    assert len(compress(noise)) <= len(noise) + 1024  # stored as it is
    assert len(compress(bytes(mixed))) < len(noise) - 300_000  # the text in it was compressed

    out = bytearray(compressed_bound(len(noise)))  # a push's kept buffer: the noise's frame goes there
    framed = compress(noise, out=out)
    assert isinstance(framed, memoryview) and framed.obj is out
    assert decompress(bytes(framed), SHA256_CELLS.digest(noise), len(noise)) == noise
    assert isinstance(compress(text, out=out), bytes)  # compressible: the one-shot frame, smaller


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 600_000), data=st.data())
def test_is_zero_finds_a_single_nonzero_byte_anywhere(size: int, data: st.DataObject) -> None:
    buf = bytearray(size)
    assert is_zero(bytes(buf)) and is_zero(memoryview(buf))
    buf[data.draw(st.integers(0, size - 1))] = data.draw(st.integers(1, 255))
    assert not is_zero(bytes(buf))
    assert not is_zero(memoryview(buf))  # the push reads cells into a buffer and checks a view of it


def test_is_zero_of_nothing() -> None:
    assert is_zero(b"")


# ---- what a bundle may hold -------------------------------------------------------------------
def test_scan_refuses_a_fifo(scratch: Path) -> None:
    os.mkfifo(scratch / "pipe")
    with pytest.raises(InvalidInput, match="'pipe' is a fifo"):
        scan_tree(scratch)


def test_scan_refuses_a_socket(scratch: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(scratch / "sock"))
        with pytest.raises(InvalidInput, match="'sock' is a socket"):
            scan_tree(scratch)


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"abs": "/etc/passwd"}, "absolute"),
        ({"up": "../outside"}, "points outside"),
        ({"d/deep": "../../outside"}, "points outside"),
        # each lexically inside; together d/s is the bundle itself and "t" climbs one above it
        ({"d/s": "..", "t": "d/s/.."}, "resolves outside"),
    ],
)
def test_scan_refuses_symlinks_leaving_the_bundle(scratch: Path, links: dict[str, str], message: str) -> None:
    root = scratch / "bundle"
    (root / "d").mkdir(parents=True)
    for name, target in links.items():
        os.symlink(target, root / name)
    with pytest.raises(InvalidInput, match=message):
        scan_tree(root)


def test_scan_accepts_symlinks_inside(scratch: Path) -> None:
    (scratch / "d").mkdir()
    (scratch / "f").write_bytes(b"x")
    os.symlink("../f", scratch / "d" / "up")
    os.symlink("d/up", scratch / "chain")
    os.symlink("nowhere", scratch / "dangling")
    kinds = {e.path: (e.type, e.target) for e in scan_tree(scratch)}
    assert kinds["d/up"] == ("symlink", "../f") and kinds["chain"] == ("symlink", "d/up")
    assert kinds["dangling"] == ("symlink", "nowhere")


def test_scan_wants_a_folder(scratch: Path) -> None:
    (scratch / "disk.hdd").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="not a folder"):
        scan_tree(scratch / "disk.hdd")
    with pytest.raises(InvalidInput, match="does not exist"):
        scan_tree(scratch / "missing")


def test_scan_lists_empty_files_and_folders_without_chunks(scratch: Path) -> None:
    (scratch / "empty-dir").mkdir()
    (scratch / "empty-file").touch()
    (scratch / "f").write_bytes(b"abc")
    assert scan_tree(scratch) == [
        FileEntry("empty-dir", "dir", 0o755 & ~_umask()),
        FileEntry("empty-file", "file", 0o644 & ~_umask(), 0),
        FileEntry("f", "file", 0o644 & ~_umask(), 3),
    ]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# ---- unpacking never leaves its folder --------------------------------------------------------
def _one_file_index(path: str = "f", size: int = 4096) -> tuple[PackIndex, bytes]:
    raw = os.urandom(size)
    entry = FileEntry(path, "file", 0o644, size, (Chunk(0, size, SHA256_CELLS.digest(raw)),))
    return PackIndex(4096, (entry,)), raw


def test_write_chunk_does_not_follow_a_planted_symlink(scratch: Path) -> None:
    index, raw = _one_file_index()
    dest, victim = scratch / "dest", scratch / "victim"
    victim.write_bytes(b"untouched")
    prepare_tree(dest, index)
    (dest / "f").unlink()
    os.symlink(victim, dest / "f")
    with pytest.raises(InvalidInput, match="not a regular file"):
        write_chunk(dest, index.files[0], index.files[0].chunks[0], raw)
    assert victim.read_bytes() == b"untouched"


def test_write_chunk_does_not_walk_through_a_symlinked_folder(scratch: Path) -> None:
    index, raw = _one_file_index("sub/f")
    dest, elsewhere = scratch / "dest", scratch / "elsewhere"
    prepare_tree(dest, index)
    os.rename(dest / "sub", elsewhere)
    os.symlink(elsewhere, dest / "sub")
    with pytest.raises(InvalidInput, match="not a plain folder"):
        write_chunk(dest, index.files[0], index.files[0].chunks[0], raw)
    assert (elsewhere / "f").read_bytes() == bytes(4096)


def test_write_chunk_refuses_bytes_that_do_not_fit(scratch: Path) -> None:
    index, raw = _one_file_index()
    prepare_tree(scratch / "dest", index)
    with pytest.raises(ChunkCorrupt):
        write_chunk(scratch / "dest", index.files[0], index.files[0].chunks[0], raw[:-1])


def test_finalize_refuses_a_symlink_escaping_through_another(scratch: Path) -> None:
    index = PackIndex(
        4096,
        (
            FileEntry("d", "dir", 0o755),
            FileEntry("d/s", "symlink", 0o777, target=".."),
            FileEntry("t", "symlink", 0o777, target="d/s/.."),
        ),
    )
    dest = scratch / "dest"
    prepare_tree(dest, index)
    with pytest.raises(InvalidInput, match="'t' resolves outside"):
        finalize_tree(dest, index)
    assert not os.path.lexists(dest / "t")


@pytest.mark.parametrize(
    "files",
    [
        (FileEntry("a", "file", 0o644, 0), FileEntry("a/b", "file", 0o644, 0)),
        (FileEntry("a", "symlink", 0o777, target="x"), FileEntry("a/b", "symlink", 0o777, target="..")),
        (FileEntry("a", "symlink", 0o777, target="x"), FileEntry("a/b/c", "file", 0o644, 0)),
        (FileEntry("a", "dir", 0o755), FileEntry("a", "file", 0o644, 0)),
    ],
)
def test_entries_inside_files_or_symlinks_are_refused(scratch: Path, files: tuple[FileEntry, ...]) -> None:
    index = PackIndex(4096, files)
    with pytest.raises(InvalidInput):
        prepare_tree(scratch / "dest", index)
    with pytest.raises(InvalidInput):
        PackIndex.from_bytes(index.canonical_bytes())
    assert not (scratch / "dest").exists()


def test_prepare_wants_an_empty_folder(scratch: Path) -> None:
    index, _ = _one_file_index()
    (scratch / "busy").mkdir()
    (scratch / "busy" / "x").touch()
    (scratch / "file").touch()
    with pytest.raises(InvalidInput, match="not empty"):
        prepare_tree(scratch / "busy", index)
    with pytest.raises(InvalidInput, match="not a folder"):
        prepare_tree(scratch / "file", index)
    (scratch / "empty").mkdir()
    prepare_tree(scratch / "empty", index)
    assert (scratch / "empty" / "f").stat().st_size == 4096


def test_modes_are_applied_last_without_setuid(scratch: Path) -> None:
    raw = os.urandom(4096)
    index = PackIndex(
        4096,
        (
            FileEntry("ro", "dir", 0o555),
            FileEntry("ro/f", "file", 0o7755, 4096, (Chunk(0, 4096, SHA256_CELLS.digest(raw)),)),
            FileEntry("ro/link", "symlink", 0o777, target="f"),
        ),
    )
    unpack_from(index, scratch / "dest", lambda _c: raw)
    assert stat.S_IMODE(os.stat(scratch / "dest" / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(scratch / "dest" / "ro" / "f").st_mode) == 0o755
    assert (scratch / "dest" / "ro" / "link").read_bytes() == raw


def test_finalize_twice_is_harmless(scratch: Path) -> None:
    """A pull interrupted during finalize resumes by finalizing again."""
    index = PackIndex(4096, (FileEntry("l", "symlink", 0o777, target="x"),))
    prepare_tree(scratch / "dest", index)
    finalize_tree(scratch / "dest", index, fsync=True)
    finalize_tree(scratch / "dest", index)
    assert os.readlink(scratch / "dest" / "l") == "x"


def test_cell_ref_is_a_value() -> None:
    assert CellRef("a", 0, 4096) == CellRef("a", 0, 4096)
    assert len({CellRef("a", 0, 4096), CellRef("a", 0, 4096)}) == 1

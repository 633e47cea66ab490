"""client.transfer.download on a tmp folder: placing chunk bytes (sparse, exact), verifying a chunk
object, and a pull that takes chunks from this machine first (a damaged local copy is dropped and
downloaded, never written), against a fake catalog and mocked storage.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from client.blobio import BlobClient
from client.direct_io import O_DIRECT, pwrite_direct
from client.packer import ChunkCorrupt, compress, data_runs, prepare_tree
from client.transfer import NoProgress, TransferConfig, download
from client.transfer.download import _data_runs, _Files, _unpack, _Work, place
from core.pack import Chunk, FileEntry, PackIndex

BLOCK = 4096
KEY = ("vm", "1.0", "x86_64")


# ---- which bytes are written ------------------------------------------------------------------------
@st.composite
def chunk_bytes(draw: st.DrawFn) -> bytes:
    """Up to 12 blocks, each all zeros, all data, or data with zeros at its start or end (unaligned
    zero runs), and possibly a last block cut short."""
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["zero", "data", "zero-head", "zero-tail"]))
        cut = draw(st.integers(1, BLOCK - 1))
        data = b"\x07" * BLOCK
        parts.append({"zero": bytes(BLOCK), "data": data, "zero-head": bytes(cut) + data[cut:]}.get(kind, data[:cut]))
        if kind == "zero-tail":
            parts[-1] += bytes(BLOCK - cut)
    tail = draw(st.integers(0, BLOCK - 1))
    parts.append(draw(st.sampled_from([bytes(tail), b"\x01" * tail])))
    return b"".join(parts)


@settings(max_examples=300)
@given(chunk_bytes())
def test_data_runs_skip_exactly_the_zero_blocks_packer_would(data: bytes) -> None:
    buf = bytearray(b"\xff" * 3 + data + b"\xff" * 5)  # the chunk inside a bigger buffer
    runs = [(a - 3, b - 3) for a, b in _data_runs(buf, 3, 3 + len(data), 8 * BLOCK)]
    assert runs == list(data_runs(data))
    covered = bytearray(len(data))
    for a, b in runs:
        covered[a:b] = data[a:b]
    assert bytes(covered) == data  # whatever is not written is zeros


def test_data_runs_align_blocks_in_the_file_not_in_the_buffer() -> None:
    data = b"\x01" * 100 + bytes(BLOCK) + b"\x01" * 100
    # the chunk starts 100 bytes before a block boundary of its file: the zero block at 100 is aligned
    assert list(_data_runs(bytearray(data), 0, len(data), BLOCK - 100)) == [(0, 100), (100 + BLOCK, len(data))]
    # at a block boundary it is not (the zero run straddles two blocks): everything is written
    assert list(_data_runs(bytearray(data), 0, len(data), 0)) == [(0, len(data))]


def test_place_writes_the_chunk_at_its_offset_and_leaves_holes(tmp_path: Path) -> None:
    size = 64 * BLOCK
    data = os.urandom(BLOCK) + bytes(8 * BLOCK) + os.urandom(BLOCK)
    chunk = Chunk(16 * BLOCK, len(data), hashlib.sha256(data).hexdigest())
    entry = FileEntry("disk/disk.hds", size=size, chunks=(chunk,))
    index = PackIndex(16 * BLOCK, (FileEntry("disk", "dir", 0o755), entry))
    root = tmp_path / "vm"
    prepare_tree(root, index)
    raw = bytearray(16 * BLOCK)  # a worker's buffer: bigger than the chunk, stale bytes after it
    raw[: len(data)] = data
    raw[len(data) :] = b"\xee" * (len(raw) - len(data))
    files = _Files(root)
    try:
        place(files, raw, entry, chunk)
        place(files, raw, entry, chunk)  # again (a resumed pull): same bytes
        with pytest.raises(ChunkCorrupt):
            place(files, raw, FileEntry("disk/disk.hds", size=17 * BLOCK), chunk)  # does not fit the file
    finally:
        files.close()
    on_disk = (root / "disk" / "disk.hds").read_bytes()
    assert on_disk == bytes(16 * BLOCK) + data + bytes(size - 16 * BLOCK - len(data))
    assert os.stat(root / "disk" / "disk.hds").st_blocks * 512 <= 4 * BLOCK  # only the two data blocks


needs_direct = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform (macOS): nothing to test")


@needs_direct
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_place_writes_large_aligned_runs_past_the_page_cache_and_the_rest_as_usual(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of at least 64 KiB at aligned offsets go through a direct descriptor where the filesystem
    takes one, small runs and a file's short last block through the ordinary one: the file holds
    exactly the chunk's bytes either way, holes included."""
    if where == "tmpfs" and not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    base = tmp_path if where == "disk" else Path("/dev/shm") / f"pdcat-place-{os.getpid()}-{os.urandom(4).hex()}"
    direct: list[tuple[int, int, bool]] = []

    def spied(fd: int, data: memoryview, offset: int, *, pad: bool = False) -> bool:
        done = pwrite_direct(fd, data, offset, pad=pad)
        direct.append((offset, len(data), done))
        return done

    monkeypatch.setattr(sys.modules["client.transfer.download"], "pwrite_direct", spied)
    big, small = 32 * BLOCK, 2 * BLOCK
    data = os.urandom(big) + bytes(big) + os.urandom(small) + bytes(BLOCK) + os.urandom(big) + os.urandom(1000)
    chunk = Chunk(0, len(data), hashlib.sha256(data).hexdigest())
    entry = FileEntry("disk.hds", size=len(data), chunks=(chunk,))
    root = base / "vm"
    try:
        prepare_tree(root, PackIndex(len(data), (entry,)))
        files = _Files(root)
        try:
            place(files, bytearray(data), entry, chunk)
        finally:
            files.close()
        assert (root / "disk.hds").read_bytes() == data
        offsets = [(offset, size) for offset, size, _ in direct]
        expected = [(0, big), (2 * big + small + BLOCK, big)]  # not the small run, nor the short last block
        if where == "disk":
            assert offsets == expected and all(done for _, _, done in direct)
        else:  # tmpfs takes direct writes since Linux 6.6 and refuses them before
            assert offsets in ([], expected)
    finally:
        if where == "tmpfs":
            shutil.rmtree(base, ignore_errors=True)


@needs_direct
def test_a_refused_direct_write_is_written_again_as_usual_and_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that refuses a direct write half-way (EINVAL after part of it): the run is written
    again through the ordinary descriptor, and the rest of the pull does not try direct writes."""
    tries: list[int] = []

    def refused(fd: int, data: memoryview, offset: int, *, pad: bool = False) -> bool:
        tries.append(offset)
        plain = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)  # the same file, not direct
        try:
            os.pwrite(plain, b"\xff" * (len(data) // 2), offset)  # garbage over half of it, then the refusal
        finally:
            os.close(plain)
        return False

    monkeypatch.setattr(sys.modules["client.transfer.download"], "pwrite_direct", refused)
    run = 32 * BLOCK
    data = os.urandom(run) + bytes(run) + os.urandom(run)
    entry = FileEntry("disk.hds", size=2 * len(data))
    chunks = (
        Chunk(0, len(data), hashlib.sha256(data).hexdigest()),
        Chunk(len(data), len(data), hashlib.sha256(data).hexdigest()),
    )
    root = tmp_path / "vm"
    prepare_tree(root, PackIndex(len(data), (entry,)))
    files = _Files(root)
    try:
        for chunk in chunks:
            place(files, bytearray(data), entry, chunk)
    finally:
        files.close()
    assert (root / "disk.hds").read_bytes() == data + data
    assert tries == [0]  # refused once: every later run went the ordinary way


def test_place_refuses_a_symlink_planted_in_the_tree(tmp_path: Path) -> None:
    entry = FileEntry("disk/disk.hds", size=BLOCK, chunks=(Chunk(0, BLOCK, "0" * 64),))
    index = PackIndex(BLOCK, (FileEntry("disk", "dir", 0o755), entry))
    root = tmp_path / "vm"
    prepare_tree(root, index)
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    (root / "disk" / "disk.hds").unlink()
    (root / "disk" / "disk.hds").symlink_to(outside)
    files = _Files(root)
    try:
        with pytest.raises(Exception, match="not a regular file"):
            place(files, bytearray(BLOCK), entry, entry.chunks[0])
    finally:
        files.close()
    assert outside.read_bytes() == b""


# ---- verifying an object -------------------------------------------------------------------------
def _work_with(blob: bytes, largest: int) -> _Work:
    work = _Work(largest)
    work.blob[: len(blob)] = blob
    return work


def test_unpack_verifies_size_digest_and_trailing_bytes() -> None:
    raw = os.urandom(3000) + bytes(5000)
    digest = hashlib.sha256(raw).hexdigest()
    blob = compress(raw)
    out = bytearray(8192)
    _unpack(_work_with(blob, 8192), out, len(blob), digest, len(raw))
    assert bytes(out[: len(raw)]) == raw
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    _unpack(_work_with(no_size, 8192), out, len(no_size), digest, len(raw))  # a frame need not declare its size

    cases = {
        "not a zstd frame": (b"garbage" * 10, len(raw)),
        "declares": (blob, len(raw) - 1),
        "does not decompress": (blob[:-8], len(raw)),
        "content does not match": (compress(raw[::-1]), len(raw)),
        "bytes the index says": (blob + blob, len(raw)),  # a second frame after the first
    }
    for why, (bad, size) in cases.items():
        with pytest.raises(ChunkCorrupt, match=why):
            _unpack(_work_with(bad, 2 * 8192), bytearray(8192), len(bad), digest, size)
    wrong_declared = _work_with(no_size + b"\x00", 8192)
    with pytest.raises(ChunkCorrupt):
        _unpack(wrong_declared, out, len(no_size) + 1, digest, len(raw))


# ---- a pull that reuses this machine's chunks ------------------------------------------------------
def _pack(n: int, size: int = 4 * BLOCK) -> tuple[PackIndex, dict[str, bytes]]:
    chunks: dict[str, bytes] = {}
    entries = []
    for i in range(n):
        raw = bytes([i + 1]) * (size // 2) + os.urandom(size // 2)
        digest = hashlib.sha256(raw).hexdigest()
        chunks[digest] = raw
        entries.append(Chunk(i * size, size, digest))
    return PackIndex(size, (FileEntry("disk.hds", size=n * size, chunks=tuple(entries)),)), chunks


class FakeCatalog:
    def pull_urls(self, catalog_id: str, version: str, architecture: str, digests: list[str]) -> dict[str, str]:
        return {d: f"http://storage.test/{d}?sig=x" for d in digests}

    def report_corrupt(self, *args: Any) -> dict[str, list[str]]:
        return {"quarantined": []}


class FakeLocal:
    """Chunk objects held in memory, like client.cache.LocalChunks holds them in files."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.dropped: list[str] = []
        self.kept: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def has(self, chunk_digest: str) -> bool:
        return chunk_digest in self.objects

    def read_object(self, chunk_digest: str, into: memoryview) -> int | None:
        blob = self.objects.get(chunk_digest)
        if blob is None:
            return None
        into[: len(blob)] = blob
        return len(blob)

    def read_range(self, chunk_digest: str, into: memoryview) -> bool:
        return False

    def drop(self, chunk_digest: str) -> None:
        with self.lock:
            self.objects.pop(chunk_digest, None)
            self.dropped.append(chunk_digest)

    def keep(self, chunk_digest: str, blob: memoryview) -> None:
        with self.lock:
            self.kept[chunk_digest] = bytes(blob)


def test_local_chunks_are_used_first_and_a_damaged_one_is_dropped_and_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDCAT_CACHE_DIR", str(tmp_path / "cache"))  # where the pull lock lives
    index, chunks = _pack(8)
    digests = list(chunks)
    local = FakeLocal({d: compress(chunks[d]) for d in digests[:5]})
    damaged = digests[1]
    blob = bytearray(local.objects[damaged])
    blob[len(blob) // 2] ^= 0xFF
    local.objects[damaged] = bytes(blob)
    fetched: list[str] = []
    lock = threading.Lock()

    def handle(request: httpx.Request) -> httpx.Response:
        digest = request.url.path.strip("/")
        with lock:
            fetched.append(digest)
        return httpx.Response(200, content=compress(chunks[digest]))

    final = tmp_path / "dest" / "vm.pvm"
    stats = download(
        FakeCatalog(),  # type: ignore[arg-type]
        {"catalog_id": KEY[0], "version": KEY[1], "architecture": KEY[2]},
        index,
        {},
        final,
        config=TransferConfig(workers=3, chunk_delay=0),
        progress=NoProgress(),
        blobs=BlobClient(transport=httpx.MockTransport(handle), retries=0),
        local=local,
    )
    assert sorted(fetched) == sorted([damaged, *digests[5:]])  # the intact local ones never hit the network
    assert local.dropped == [damaged]
    assert set(local.kept) == set(fetched) and all(local.kept[d] == compress(chunks[d]) for d in fetched)
    assert (stats.downloaded_chunks, stats.reused_chunks) == (4, 4)
    assert (final / "disk.hds").read_bytes() == b"".join(chunks[c.digest] for c in index.chunks())

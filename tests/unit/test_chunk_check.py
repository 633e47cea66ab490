"""The server's verdict on a chunk: one-shot and streamed decompression agree, and neither trusts a frame."""

from __future__ import annotations

import hashlib
import os

import pytest
import zstandard

from core.chunk_check import ONE_SHOT_LIMIT, raw_size_if_valid

RAW = os.urandom(3000) + b"text " * 2000


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("limit", [ONE_SHOT_LIMIT, ONE_SHOT_LIMIT + 4096], ids=["one-shot", "streamed"])
def test_a_good_chunk_is_verified_with_its_raw_size(limit: int) -> None:
    blob = zstandard.ZstdCompressor(level=3).compress(RAW)
    assert raw_size_if_valid(blob, _sha(RAW), limit) == len(RAW)


@pytest.mark.parametrize("limit", [ONE_SHOT_LIMIT, ONE_SHOT_LIMIT + 4096], ids=["one-shot", "streamed"])
def test_several_frames_are_one_chunk_unless_the_first_declares_another_size(limit: int) -> None:
    """A puller (client.transfer.download) reads across frames but refuses a chunk whose first frame
    declares a size other than the chunk's: the server must refuse what no puller can read."""
    undeclared = zstandard.ZstdCompressor(write_content_size=False)
    blob = undeclared.compress(RAW[:5000]) + zstandard.ZstdCompressor().compress(RAW[5000:])
    assert raw_size_if_valid(blob, _sha(RAW), limit) == len(RAW)
    blob = zstandard.ZstdCompressor().compress(RAW[:5000]) + zstandard.ZstdCompressor().compress(RAW[5000:])
    assert raw_size_if_valid(blob, _sha(RAW), limit) is None  # the first frame declares 5000 bytes
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip"
    assert raw_size_if_valid(skippable + zstandard.ZstdCompressor().compress(RAW), _sha(RAW), limit) is None


@pytest.mark.parametrize("limit", [ONE_SHOT_LIMIT, ONE_SHOT_LIMIT + 4096], ids=["one-shot", "streamed"])
def test_bad_chunks_are_refused(limit: int) -> None:
    good = zstandard.ZstdCompressor(level=3).compress(RAW)
    assert raw_size_if_valid(good, _sha(RAW[:-1]), limit) is None  # another digest
    assert raw_size_if_valid(b"not zstd at all", _sha(RAW), limit) is None
    assert raw_size_if_valid(good[:-8], _sha(RAW), limit) is None  # truncated
    assert raw_size_if_valid(zstandard.ZstdCompressor().compress(b""), _sha(b""), limit) is None  # empty
    # a bomb: more raw bytes than the session's grid allows, with or without a declared size
    bomb = bytes(limit + 1)
    for writer in (zstandard.ZstdCompressor(), zstandard.ZstdCompressor(write_content_size=False)):
        assert raw_size_if_valid(writer.compress(bomb), _sha(bomb), limit) is None


def test_a_reused_buffer_never_lends_one_chunk_bytes_to_the_next() -> None:
    """One-shot checks decompress into kept buffers: a short chunk after a long one, and checks in
    several threads at once, are each judged on their own bytes only."""
    from concurrent.futures import ThreadPoolExecutor

    long_raw = os.urandom(ONE_SHOT_LIMIT)
    short_raw = long_raw[:1000]
    long_blob = zstandard.ZstdCompressor(level=1).compress(long_raw)
    short_blob = zstandard.ZstdCompressor(level=1).compress(short_raw)
    assert raw_size_if_valid(long_blob, _sha(long_raw), ONE_SHOT_LIMIT) == ONE_SHOT_LIMIT
    assert raw_size_if_valid(short_blob, _sha(short_raw), ONE_SHOT_LIMIT) == 1000
    assert raw_size_if_valid(short_blob, _sha(long_raw[:2000]), ONE_SHOT_LIMIT) is None

    raws = [os.urandom(1 << 20) + bytes([i]) * i for i in range(1, 17)]
    jobs = [(zstandard.ZstdCompressor().compress(r), _sha(r), len(r)) for r in raws]
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda job: raw_size_if_valid(job[0], job[1], ONE_SHOT_LIMIT), jobs * 4))
    assert sizes == [size for _, _, size in jobs] * 4

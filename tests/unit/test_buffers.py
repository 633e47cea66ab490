"""core.buffers.BufferPool: large buffers are reused, and no more are kept than asked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.buffers import BufferPool


def _address(view: memoryview) -> object:
    return view.obj  # the buffer behind the view


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_a_kept_buffer_holds_only_the_pages_its_calls_used() -> None:
    """The server keeps buffers sized for the largest chunk and fills them with smaller ones: the
    part never written must cost no memory (a bytearray of that size was resident in full)."""
    largest, used = 64 * 1024 * 1024, 1024 * 1024
    pool = BufferPool(keep=1, largest=largest)
    before = _resident_bytes()
    with pool.take(used) as view:
        view[:] = b"\x01" * used
    with pool.take(used):
        grown = _resident_bytes() - before
    assert used <= grown < largest // 4


def test_a_buffer_is_reused_and_sized_to_the_call() -> None:
    pool = BufferPool(keep=1, largest=1024)
    with pool.take(100) as first:
        assert len(first) == 100
        first[:3] = b"abc"
        behind = _address(first)
    with pool.take(1000) as second:
        assert len(second) == 1000 and _address(second) is behind and bytes(second[:3]) == b"abc"


def test_no_more_than_keep_stay_kept_and_a_large_one_is_never_kept() -> None:
    pool = BufferPool(keep=1, largest=1024)
    with pool.take(10) as a, pool.take(10) as b:
        before = [_address(a), _address(b)]  # held here, so no new buffer can take their place
        assert [len(x) for x in before] == [1024, 10]  # past what is kept: the call's size, not the largest
    with pool.take(10) as c, pool.take(10) as d:
        after = [_address(c), _address(d)]
    assert sum(x is y for x in before for y in after) == 1  # one came back, the other was made anew
    with pool.take(4096) as big:
        assert len(big) == 4096 and len(_address(big)) == 4096  # made for the call
    with pool.take(10) as e:
        assert len(_address(e)) == 1024  # the kept one, not the large one

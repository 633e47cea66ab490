"""core.buffers.BufferPool: large buffers are reused, and no more are kept than asked."""

from __future__ import annotations

from core.buffers import BufferPool


def _address(view: memoryview) -> object:
    return view.obj  # the bytearray behind the view


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

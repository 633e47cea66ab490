"""Large byte buffers reused from call to call, for the embedded server's per-chunk work.

A fresh buffer of megabytes costs a page fault per 4 KiB the first time it is written: ``pdcat
serve`` tells its allocator to hand large blocks back to the kernel at once (``client.cli``: memory
stays flat), so every new one is new memory. Reading each staged 4 MiB chunk into a new ``bytes``
took 1.9 ms, into a kept buffer 0.3 ms (the server's busiest line in a push's profile, ``py-spy``).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["BufferPool", "fill"]


class _ReadsInto(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def fill(reader: _ReadsInto, out: memoryview) -> int:
    """Read from ``reader`` into ``out`` until it is full or the reader has no more; the bytes read."""
    got = 0
    while got < len(out):
        n = reader.readinto(out[got:])
        if not n:
            break
        got += n
    return got


class BufferPool:
    """At most ``keep`` buffers of at most ``largest`` bytes stay kept; a larger or an extra one is
    made for the call and dropped after it. Thread-safe.

    A kept buffer is an anonymous mapping, not a ``bytearray``: a bytearray writes zeros over all of
    its ``largest`` bytes, so each stayed resident in full, while a mapping holds only the pages used.
    Sized for the largest chunk the server accepts (8 MiB) and filled with 4 MiB ones, the server's
    two kept buffers held 17 MiB of its 64 MiB budget; mapped, they hold what the chunks used."""

    def __init__(self, keep: int, largest: int) -> None:
        self._keep = keep
        self._largest = largest
        self._spare: list[mmap.mmap] = []
        self._made = 0  # buffers of ``largest`` bytes made (kept, or lent out and coming back)
        self._lock = threading.Lock()

    @contextmanager
    def take(self, size: int) -> Iterator[memoryview]:
        """``size`` writable bytes (their content is whatever a previous call left), until the block ends."""
        buffer: mmap.mmap | None = None
        if size <= self._largest:
            with self._lock:
                if self._spare:
                    buffer = self._spare.pop()
                elif self._made < self._keep:
                    self._made += 1
                    buffer = mmap.mmap(-1, self._largest)
        try:
            # beyond what is kept, a buffer of the call's own size: bytearray(n) zeroes all n bytes
            yield memoryview(buffer if buffer is not None else bytearray(size))[:size]
        finally:
            if buffer is not None:
                with self._lock:
                    self._spare.append(buffer)

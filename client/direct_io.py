"""Writes that bypass the page cache (Linux ``O_DIRECT``), for bytes this process never reads again:
a pulled VM's files and the compressed objects the cache keeps.

Why: a buffered write copies every byte into page-cache pages the kernel must first find (on the
2-core test VM, reclaim them from other files), then writes them back later. A pull of the bench's
1.5 GiB VM spent 2.3-3.9 s of system CPU that way and 0.4-0.6 s with direct writes (``/usr/bin/time``
on ``pdcat pull --no-cache``, ADR 003). The pulled VM is then on disk rather than in memory, which is
also what its next reader, the hypervisor, wants: it opens disk images uncached itself.

A direct write needs its memory, file offset and length aligned to the device's block (4 KiB covers
every disk here): the bytes are copied into one of a few shared page-aligned buffers first, a copy that
costs far less than the page-cache work it replaces. Whatever is not aligned, a filesystem that
refuses direct writes (tmpfs: ``EINVAL``) and a platform without ``O_DIRECT`` get the caller's
ordinary write.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from collections.abc import Iterator

__all__ = ["ALIGN", "aligned_buffer", "open_direct", "pwrite_direct", "reopen_direct"]

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
ALIGN = 4096
"""Offsets and lengths of direct writes are multiples of this (the page size, at least any block size)."""

_BUFFERS = 4
"""Aligned buffers shared by every thread: a few writes at a time keep a disk busy; one per worker
would add a chunk's worth of memory per worker."""
_free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
_made = threading.BoundedSemaphore(_BUFFERS)


@contextlib.contextmanager
def aligned_buffer(size: int) -> Iterator[mmap.mmap]:
    """One of the shared aligned buffers, at least ``size`` bytes (made, or grown, on demand)."""
    try:
        buf = _free.get_nowait()
    except queue.Empty:
        buf = mmap.mmap(-1, size) if _made.acquire(blocking=False) else _free.get()
    if len(buf) < size:
        buf.close()
        buf = mmap.mmap(-1, size)  # anonymous mappings are page-aligned
    try:
        yield buf
    finally:
        _free.put(buf)


def open_direct(path: os.PathLike[str] | str, flags: int, mode: int = 0o644) -> int | None:
    """``os.open(path, flags | O_DIRECT)``; None where direct writes do not exist or the filesystem
    refuses them (the caller opens it the ordinary way). A file this call created before the refusal
    (Linux creates it, then refuses the flag) is removed, so an ``O_EXCL`` open of it can follow."""
    if not O_DIRECT:
        return None
    try:
        return os.open(path, flags | O_DIRECT, mode)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        if flags & os.O_CREAT and flags & os.O_EXCL:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return None


def reopen_direct(fd: int) -> int | None:
    """A second, direct, write descriptor of the file ``fd`` has open: the same file, not looked up
    again by its path (nothing planted in the folder since can redirect it). None where that cannot be
    done (no ``O_DIRECT``, no ``/proc``, a filesystem that refuses)."""
    if not O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def pwrite_direct(fd: int, data: memoryview, offset: int, *, pad: bool = False) -> bool:
    """Write ``data`` at ``offset`` through the direct descriptor ``fd``; False, before or after
    writing part of it, if the filesystem refuses (the caller writes the same bytes again its own way).

    ``offset`` is a multiple of :data:`ALIGN`, and so is ``len(data)`` unless ``pad``: then the last
    block is padded with zeros, and the caller cuts the file to its length.
    """
    size = len(data)
    padded = -(-size // ALIGN) * ALIGN
    if offset % ALIGN or (padded != size and not pad):
        raise ValueError("a direct write needs an aligned offset and length")
    with aligned_buffer(padded) as buf:
        view = memoryview(buf)
        try:
            view[:size] = data
            view[size:padded] = bytes(padded - size)
            written = 0
            while written < padded:
                try:
                    written += os.pwrite(fd, view[written:padded], offset + written)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        return False
                    raise
        finally:
            view.release()
    return True

"""Storage requests fanned out over threads: a page of requests costs its slowest one, not the sum."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["parallel"]

T = TypeVar("T")
R = TypeVar("R")


def parallel(work: Callable[[T], R], items: list[T], *, workers: int = 16) -> list[R]:
    """``work`` of every item, in order, at most ``workers`` at once. One worker (or one item) runs
    in the calling thread: a store whose requests cost CPU rather than waiting (``BlobStore.concurrency``
    of a local disk) gains nothing from threads but their hand-offs."""
    if len(items) <= 1 or workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(work, items))

"""Bounded parallel execution with one coordinator (the s3transfer pattern, kept small).

At most ``workers`` tasks run or wait at once: a slot is taken *before* a task is queued and given
back when it finishes, so memory stays bounded whatever the VM size. The first failure stops new
submissions, remaining tasks see ``coordinator.failed`` and return at once, and that failure is
raised. Ctrl-C cancels the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Coordinator", "run_bounded"]

T = TypeVar("T")


class Coordinator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error


def run_bounded(items: Iterable[T], task: Callable[[T], None], workers: int) -> None:
    """Run ``task`` over ``items`` with at most ``workers`` in flight; raise the first failure."""
    coordinator = Coordinator()
    slots = threading.BoundedSemaphore(max(1, workers))

    def wrapped(item: T) -> None:
        if coordinator.failed:
            return
        try:
            task(item)
        except BaseException as exc:  # recorded, re-raised in the submitting thread
            coordinator.fail(exc)

    def release(_: Future[None]) -> None:
        slots.release()

    executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="pdcat-transfer")
    try:
        for item in items:
            if not _acquire(slots, coordinator):
                break
            executor.submit(wrapped, item).add_done_callback(release)
        executor.shutdown(wait=True)
    except BaseException as exc:  # Ctrl-C: stop queued tasks, let running ones see the failure
        coordinator.fail(exc)
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    if coordinator.error is not None:
        raise coordinator.error


def _acquire(slots: threading.BoundedSemaphore, coordinator: Coordinator) -> bool:
    """Wait for a free slot; False as soon as the transfer has failed."""
    while not coordinator.failed:
        if slots.acquire(timeout=0.2):
            return True
    return False

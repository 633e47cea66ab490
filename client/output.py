"""What people see: tables, sizes and progress bars, or JSON for scripts.

Tables are plain aligned columns, as docker and kubectl print theirs: grep, awk and cut read them as
well as people do, and printing one loads nothing. rich (messages with markup, progress bars) is loaded
by the first call of :func:`console` or :func:`err_console`, so ``pdcat ls`` starts without it (~35 ms).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

__all__ = [
    "LineProgress",
    "RichProgress",
    "columns",
    "console",
    "err_console",
    "human_size",
    "manifest_table",
    "print_json",
    "printable",
]


@cache
def console() -> Console:
    """rich's console on stdout, made on first use."""
    from rich.console import Console

    return Console(stderr=False, highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    """rich's console on stderr (messages, progress bars, log lines), made on first use."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` as it may reach a terminal: a control character (an escape sequence from a hostile
    server or a corrupt file) is shown as ``?`` instead of being obeyed. ``lines``: newlines and tabs
    stay (a message or a command's output of several lines)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (lines and c in "\n\t") else "?" for c in text)


def columns(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table as text: each column as wide as its widest cell, two spaces between columns, no
    trailing spaces."""
    grid = [[printable(str(c)) for c in row] for row in (headers, *rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in grid)


def human_size(n: int | float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _state(m: dict[str, Any]) -> str:
    if m.get("revoked"):
        return "revoked"
    if m.get("tainted"):
        return "tainted"
    return str(m.get("status", ""))


def manifest_table(items: list[dict[str, Any]]) -> str:
    """``pdcat ls`` and ``show``: a row per manifest."""
    return columns(
        ("ID", "VERSION", "ARCH", "SIZE", "STATE", "TAGS", "PUSHED"),
        (
            (
                m["catalog_id"],
                m["version"],
                m["architecture"],
                human_size(m.get("size", 0)),
                _state(m),
                ",".join(m.get("tags", [])),
                (m.get("pushed_at") or "")[:19].replace("T", " "),
            )
            for m in items
        ),
    )


def pace(worked: int, left: int, elapsed: float) -> tuple[float, float | None]:
    """Bytes per second over the work really done, and seconds left at that pace (None: not known
    yet). Skipped bytes (a sparse disk's holes) are not work: counted, they showed a burst at the
    start, then a rate of a few bytes a second and days left."""
    rate = worked / elapsed if elapsed > 0 else 0.0
    return rate, (left / rate if rate > 0 else None)


class RichProgress:
    """A rich bar per phase, on a terminal: bytes, rate and time left. The bar shows what was really
    done: a transfer that fails or is interrupted leaves it where it stopped (the command then says so,
    and how to resume). Log lines (retries) print above it, through the same console."""

    def __init__(self, out: Console | None = None) -> None:
        # loaded here, by the commands that transfer: ``pdcat ls`` and the other catalog calls start without it
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        from client.progress_columns import RateColumn, TimeLeftColumn

        self._progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            RateColumn(),
            TimeLeftColumn(),
            console=out or err_console(),
            transient=False,
        )
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        self._skipped = 0

    def start(self, phase: str, total: int) -> None:
        if self._task is None:
            self._progress.start()
        else:
            self._progress.update(self._task, visible=True)
        with self._lock:
            self._skipped = 0
        self._task = self._progress.add_task(phase, total=max(total, 1), skipped=0)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def skip(self, nbytes: int) -> None:
        if self._task is not None:
            with self._lock:
                self._skipped += nbytes
                self._progress.update(self._task, advance=nbytes, skipped=self._skipped)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.refresh()

    def close(self) -> None:
        self._progress.stop()


class LineProgress:
    """Progress without a terminal (CI, a pipe, a log file): a plain line every ``every`` seconds with
    the percentage, bytes, rate and time left, and a last line saying whether the phase finished or
    where it stopped. Thread-safe: transfers advance it from many threads."""

    def __init__(self, out: TextIO | None = None, *, every: float = 5.0) -> None:
        self._out = out or sys.stderr
        self._every = every
        self._lock = threading.Lock()
        self._phase, self._total, self._done, self._skipped = "", 0, 0, 0
        self._started = self._shown = 0.0

    def start(self, phase: str, total: int) -> None:
        with self._lock:
            self._phase, self._total, self._done, self._skipped = phase, max(total, 1), 0, 0
            self._started = self._shown = time.monotonic()
        self._print(f"{phase}: {human_size(total)}")

    def skip(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            self._skipped += nbytes

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes
            now = time.monotonic()
            if now - self._shown < self._every:
                return
            self._shown = now
            line = f"{self._phase}: {self._status(now)}"
        self._print(line)

    def finish(self) -> None:
        with self._lock:
            now = time.monotonic()
            done = self._done >= self._total
            elapsed = now - self._started
            line = (
                f"{self._phase}: done, {human_size(self._total)} in {elapsed:.0f}s"
                if done
                else f"{self._phase}: stopped at {self._status(now, eta=False)}"
            )
        self._print(line)

    def close(self) -> None:
        pass

    def _status(self, now: float, *, eta: bool = True) -> str:
        """How far, how fast, how long still; called with the lock held."""
        rate, left = pace(self._done - self._skipped, self._total - self._done, now - self._started)
        share = min(self._done / self._total, 1.0)
        amount = f"{human_size(self._done)} of {human_size(self._total)}"
        text = f"{share:.0%} ({amount}), {human_size(rate)}/s"
        if eta and left is not None and share < 1:
            text += f", about {int(left) // 60}:{int(left) % 60:02d} left"
        return text

    def _print(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

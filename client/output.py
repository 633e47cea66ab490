"""What people see: tables, sizes and progress bars (rich), or JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

__all__ = ["RichProgress", "console", "human_size", "manifest_table", "print_json"]

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


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


def manifest_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "VERSION", "ARCH", "SIZE", "STATE", "TAGS", "PUSHED"):
        table.add_column(column)
    for m in items:
        table.add_row(
            m["catalog_id"],
            m["version"],
            m["architecture"],
            human_size(m.get("size", 0)),
            _state(m),
            ",".join(m.get("tags", [])),
            (m.get("pushed_at") or "")[:19].replace("T", " "),
        )
    return table


class RichProgress:
    """A rich bar per phase: bytes, rate and time left."""

    def __init__(self, out: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=out or err_console,
            transient=False,
        )
        self._task: TaskID | None = None

    def start(self, phase: str, total: int) -> None:
        if self._task is None:
            self._progress.start()
        else:
            self._progress.update(self._task, visible=True)
        self._task = self._progress.add_task(phase, total=max(total, 1))

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total)

    def close(self) -> None:
        self._progress.stop()

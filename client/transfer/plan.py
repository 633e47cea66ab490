"""What a pull will cost, shown before it starts; a disk too small is refused up front."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.transfer.common import DiskFull
from core.pack import Chunk, FileEntry, PackIndex

__all__ = ["Places", "PullPlan", "announce", "free_bytes", "places", "written"]

Places = dict[str, list[tuple[FileEntry, Chunk]]]
"""Every place (file, cell) each chunk digest is written to."""


@dataclass(frozen=True)
class PullPlan:
    """What a pull will cost, shown before it starts."""

    manifest: dict[str, Any]
    index: PackIndex | None  # None for an original-format pack (one object, no index)
    final: Path
    cache: str  # "hit" | "miss" | "off"
    download_bytes: int  # compressed bytes to fetch
    download_chunks: int
    reused_bytes: int  # raw bytes taken from this machine instead of the network
    write_bytes: int  # bytes that will land on disk (data only; holes cost nothing)
    free_after: int


def announce(plan: PullPlan, on_plan: Callable[[PullPlan], None] | None) -> PullPlan:
    """Show the plan, then refuse up front if the disk cannot hold what the pull will write."""
    if on_plan:
        on_plan(plan)
    if plan.free_after < 0:
        raise DiskFull(
            f"not enough space in {plan.final.parent}: the pull writes {plan.write_bytes} bytes, "
            f"{plan.write_bytes + plan.free_after} are free"
        )
    return plan


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def places(index: PackIndex) -> Places:
    found: Places = {}
    for entry in index.files:
        for chunk in entry.chunks:
            found.setdefault(chunk.digest, []).append((entry, chunk))
    return found


def written(where: Places, digests: Iterable[str]) -> int:
    """Bytes written for these objects: each piece of them once, in every place it appears in the VM."""
    return sum(chunk.size for d in digests for _, chunk in where[d])

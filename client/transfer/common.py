"""What push and every pull strategy share: the configuration, progress subscribers, the results,
and where a pull keeps its partial work."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from client.cache import cache_dir
from client.retry import RetryPolicy
from core.errors import Conflict, InvalidInput, PdcatError
from core.pack import DEFAULT_CHUNK_SIZE, FORMAT_BLAKE3

__all__ = [
    "DiskFull",
    "NoProgress",
    "Progress",
    "PullResult",
    "TransferConfig",
    "destination",
    "partial_paths",
    "pull_lock",
]


class DiskFull(PdcatError):
    """The destination ran out of space; nothing was left half-written."""


def _debug_delay() -> float:
    """``PDCAT_DEBUG_CHUNK_DELAY`` (seconds per chunk) slows transfers down so fault-injection tests
    can kill a process or let URLs expire at a known point. Never set in normal use."""
    try:
        return max(0.0, float(os.environ.get("PDCAT_DEBUG_CHUNK_DELAY", "0")))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class TransferConfig:
    # transfers in flight: they mostly wait on the network (a WAN round trip per chunk), so more of
    # them than cores; each holds one compressed chunk (bench/README.md, WAN profile)
    workers: int = 8
    chunk_size: int = DEFAULT_CHUNK_SIZE
    level: int = 3
    retries: int = 5
    backoff: float = 0.5
    chunk_delay: float = field(default_factory=_debug_delay)
    # index format a push asks for: 3 sends only changed blocks (docs/adr-004-incremental-chunking.md)
    # and names them with BLAKE3 (docs/adr-005-blake3-object-names.md); the catalog may answer 2
    pack_format: int = FORMAT_BLAKE3

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff)


class Progress(Protocol):
    """A subscriber: a rich bar is one implementation, ``NoProgress`` another."""

    def start(self, phase: str, total: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def skip(self, nbytes: int) -> None:
        """Bytes that needed no work (a sparse file's holes): done, but not part of the rate."""

    def finish(self) -> None: ...


class NoProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def skip(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class PullResult:
    path: Path
    manifest: dict[str, Any]
    chunks: int
    downloaded_chunks: int
    downloaded_bytes: int
    resumed_chunks: int
    seconds: float
    reused_chunks: int = 0
    reused_bytes: int = 0
    cache: str = "off"
    clone_method: str | None = None


def destination(manifest: dict[str, Any], dest_dir: Path, name: str | None) -> Path:
    """Where a pull puts the VM: ``<name>.<vm type>`` in ``dest_dir``, which must not exist yet."""
    bundle_name = name or manifest["catalog_id"]
    if "/" in bundle_name or bundle_name.startswith(".") or not bundle_name.strip():
        raise InvalidInput(f"invalid VM name {bundle_name!r}")
    final = dest_dir / f"{bundle_name}.{manifest['vm_type']}"
    if final.exists():
        raise Conflict(f"{final} already exists; pick another --name or remove it first")
    return final


def partial_paths(final: Path) -> tuple[Path, Path]:
    """Hidden work folder and journal of a pull into ``final``; both live next to it."""
    return final.with_name(f".{final.name}.pdcat-partial"), final.with_name(f".{final.name}.pdcat-journal")


@contextlib.contextmanager
def pull_lock(final: Path) -> Iterator[None]:
    """Two pulls into the same place would share one partial folder: the second waits for the first.
    The lock lives in the cache's lock folder (lock files must outlive their holders), not in dest."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(final.resolve()).encode()).hexdigest()[:24]
    with FileLock(str(locks / f"pull-{name}.lock")):
        yield

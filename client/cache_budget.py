"""The cache's budget and which entries to evict: pure rules, no files touched.

``VmCache.prune`` applies ``plan_eviction``; ``budget_from_env`` reads the documented settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InvalidInput

__all__ = [
    "BUNDLE",
    "CHUNKS",
    "DEFAULT_KEEP_FREE_BYTES",
    "Budget",
    "CacheEntry",
    "budget_from_env",
    "lru_key",
    "plan_eviction",
]

GiB = 1024**3
DEFAULT_KEEP_FREE_BYTES = 5 * GiB
BUNDLE, CHUNKS = "bundle", "chunks"  # the two kinds of entry (client.cache says when each is made)


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    catalog_id: str
    version: str
    architecture: str
    size: int  # logical bytes, holes included
    # bytes on disk that evicting it frees, when entries are evicted least recently used first: a
    # bundle's allocated blocks; for a chunks entry its index plus the chunk objects charged to it
    disk_usage: int
    created_at: float
    last_used: float
    use_count: int
    pinned: bool
    kind: str = BUNDLE  # BUNDLE: a finished bundle folder; CHUNKS: compressed chunk objects


@dataclass(frozen=True)
class Budget:
    """``max_bytes``: the cache's own disk usage; ``keep_free_bytes``: free space left on its disk.
    ``None`` means no limit of that kind."""

    max_bytes: int | None = None
    keep_free_bytes: int | None = None


def _env_bytes(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number of bytes, not {raw[:32]!r}") from None
    if value < 0:
        raise InvalidInput(f"{name} must not be negative")
    return value


def budget_from_env() -> Budget:
    """``PDCAT_CACHE_MAX_BYTES`` (default: no limit) and ``PDCAT_CACHE_KEEP_FREE_BYTES`` (default 5 GiB)."""
    keep_free = _env_bytes("PDCAT_CACHE_KEEP_FREE_BYTES")
    return Budget(
        max_bytes=_env_bytes("PDCAT_CACHE_MAX_BYTES"),
        keep_free_bytes=DEFAULT_KEEP_FREE_BYTES if keep_free is None else keep_free,
    )


# ---- eviction (pure) --------------------------------------------------------------------------
def lru_key(entry: CacheEntry) -> tuple[float, int, float, str]:
    return entry.last_used, entry.use_count, entry.created_at, entry.digest


def plan_eviction(
    entries: Sequence[CacheEntry], budget: Budget, free_bytes: int, incoming: int = 0
) -> list[CacheEntry]:
    """The entries to evict, in order, so that ``incoming`` more bytes fit the budget.

    Least recently used first (ties: fewer uses, then older); pinned entries never. Stops as soon as
    the budget is met. If even evicting every unpinned entry cannot meet it, all of them are returned
    and the caller decides what to do (the pull may still fit on the disk).
    """

    def over(freed: int) -> bool:
        if budget.max_bytes is not None and total - freed + incoming > budget.max_bytes:
            return True
        return budget.keep_free_bytes is not None and free_bytes + freed - incoming < budget.keep_free_bytes

    total = sum(e.disk_usage for e in entries)
    victims: list[CacheEntry] = []
    freed = 0
    for entry in sorted((e for e in entries if not e.pinned), key=lru_key):
        if not over(freed):
            break
        victims.append(entry)
        freed += entry.disk_usage
    return victims

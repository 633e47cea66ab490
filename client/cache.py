"""The local VM cache: finished bundles keyed by pack digest, so a second pull of a VM is a clone.

Layout under ``cache_dir()``::

    bundles/<pack digest>/             the bundle folder, exactly as the pack describes it
    bundles/<pack digest>.index.json   the pack index (canonical bytes), to find chunks inside it
    index.sqlite                       one row per entry: size, use, pin, file fingerprints
    locks/<pack digest>.lock           per-VM file lock: two pulls of one VM never collide
    staging/<pack digest>              where a pull downloads (the transfer engine owns it)

The SQLite row is the commit point: a bundle is a hit only when its row exists *and* its folder
does. Everything that changes ``bundles/`` holds that digest's file lock. Removing an entry renames
its folder to a hidden trash name first and deletes it afterwards, so a half-deleted bundle is never
seen as a hit; leftovers of a crash (trash, folders without a row, rows without a folder) are swept
by ``prune``.

A hit is re-checked cheaply, without hashing: every path of the index is there with its type and
size, nothing else is, and each file still has the ``(size, mtime_ns)`` it had when it was committed.
Chunks reused from another cached version are always verified by their sha256.

Which entries to evict is decided by ``plan_eviction``, a pure function; ``VmCache.prune`` applies it.
The folder checks live in ``client.bundle_check``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from client.bundle_check import check_tree, measure
from client.cache_budget import DEFAULT_KEEP_FREE_BYTES, Budget, CacheEntry, budget_from_env, lru_key, plan_eviction
from client.clone import clone_tree, remove_tree
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import normalize_architecture, normalize_catalog_id, normalize_version
from core.pack import PackIndex, is_digest

__all__ = [
    "DEFAULT_KEEP_FREE_BYTES",
    "Budget",
    "CacheEntry",
    "ChunkSource",
    "VmCache",
    "budget_from_env",
    "cache_dir",
    "plan_eviction",
]

log = logging.getLogger("pdcat.cache")

MIN_PREFIX = 8
_HEX_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},64}}")
_TRASH = ".trash-"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    digest       TEXT PRIMARY KEY,
    catalog_id   TEXT NOT NULL,
    version      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    size         INTEGER NOT NULL,
    disk_usage   INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    last_used    REAL NOT NULL,
    use_count    INTEGER NOT NULL,
    pinned       INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL
)
"""
_COLUMNS = "digest, catalog_id, version, architecture, size, disk_usage, created_at, last_used, use_count, pinned"

ChunkSource = tuple[Path, int, int]
"""Where a chunk can be read on this machine: ``(file, offset, size)``."""


def cache_dir() -> Path:
    """``PDCAT_CACHE_DIR``, else the platform's user cache folder (``~/Library/Caches/pdcat``,
    ``$XDG_CACHE_HOME/pdcat``)."""
    override = os.environ.get("PDCAT_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("pdcat"))


# ---- the cache --------------------------------------------------------------------------------
class VmCache:
    """One cache folder. Safe to share between threads, and between processes through its locks."""

    def __init__(self, root: Path | None = None, budget: Budget | None = None) -> None:
        self.root = root if root is not None else cache_dir()
        self.budget = budget if budget is not None else budget_from_env()
        self._bundles = self.root / "bundles"
        self._locks_dir = self.root / "locks"
        self._staging = self.root / "staging"
        for folder in (self._bundles, self._locks_dir, self._staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self._locks: dict[str, filelock.FileLock] = {}
        self._chunk_maps: dict[str, dict[str, tuple[str, int, int]]] = {}
        self._db = sqlite3.connect(
            self.root / "index.sqlite", timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(_SCHEMA)

    def __enter__(self) -> VmCache:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    # ---- locks --------------------------------------------------------------------------------
    def lock(self, digest: str) -> filelock.FileLock:
        """The per-VM lock. One object per digest and cache, so it is reentrant in a thread (methods
        below take it too) while other threads and processes wait for it."""
        _check_digest(digest)
        with self._mutex:
            lock = self._locks.get(digest)
            if lock is None:
                lock = self._locks[digest] = filelock.FileLock(self._locks_dir / f"{digest}.lock")
            return lock

    @contextlib.contextmanager
    def _try_lock(self, digest: str) -> Iterator[bool]:
        lock = self.lock(digest)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # ---- SQLite -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, where: str = "", args: Sequence[Any] = ()) -> list[CacheEntry]:
        with self._mutex:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries {where}", tuple(args)).fetchall()
        return [_entry(row) for row in rows]

    def get(self, digest: str) -> CacheEntry | None:
        found = self._select("WHERE digest = ?", (digest,))
        return found[0] if found else None

    def entries(self) -> list[CacheEntry]:
        return self._select("ORDER BY created_at, digest")

    def usage(self) -> int:
        """Disk bytes of every entry, as measured when each was committed."""
        with self._mutex:
            (total,) = self._db.execute("SELECT COALESCE(SUM(disk_usage), 0) FROM entries").fetchone()
        return int(total)

    def _fingerprint(self, digest: str) -> dict[str, list[int]] | None:
        with self._mutex:
            row = self._db.execute("SELECT fingerprint FROM entries WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    # ---- hits ---------------------------------------------------------------------------------
    def bundle_path(self, digest: str) -> Path:
        _check_digest(digest)
        return self._bundles / digest

    def lookup(self, digest: str, index: PackIndex) -> Path | None:
        """The cached bundle of ``index``, re-checked cheaply, or None. A bundle that fails the check
        is removed (it can never become valid again). A hit counts as a use."""
        if index.digest != digest:
            raise InvalidInput("the pack index does not match the digest it is looked up by")
        with self.lock(digest):
            fingerprint = self._fingerprint(digest)
            if fingerprint is None:
                return None
            folder = self.bundle_path(digest)
            problem = check_tree(folder, index, fingerprint)
            if problem is not None:
                log.warning("cached %s is no longer intact (%s); dropping it", digest[:12], problem)
                self._discard(digest)
                return None
            index_file = self._index_file(digest)
            if not index_file.is_file():  # lost in a crash; the index itself is known good
                _write_atomic(index_file, index.canonical_bytes())
            with self._write() as db:
                db.execute(
                    "UPDATE entries SET last_used = ?, use_count = use_count + 1 WHERE digest = ?",
                    (time.time(), digest),
                )
            return folder

    def materialize(self, digest: str, dest: Path) -> str:
        """Copy the cached bundle to ``dest`` (which must not exist) by the cheapest method there is."""
        with self.lock(digest):
            src = self.bundle_path(digest)
            if self.get(digest) is None or not src.is_dir():
                raise NotFound(f"{digest[:12]} is not in the cache")
            dest.parent.mkdir(parents=True, exist_ok=True)
            return clone_tree(src, dest)

    # ---- filling ------------------------------------------------------------------------------
    def staging_dir(self, digest: str) -> Path:
        """Where a pull of ``digest`` downloads to; the transfer engine keeps its partial folder and
        journal next to it and resumes from them. Call under ``lock(digest)``.

        A finished download that was never committed (a crash in between) is removed here: the
        transfer engine could not rename a new one over it.
        """
        _check_digest(digest)
        path = self._staging / digest
        self._staging.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            _trash_and_remove(path)
        return path

    def commit(
        self, digest: str, index: PackIndex, folder: Path, *, catalog_id: str, version: str, architecture: str
    ) -> CacheEntry:
        """Move a complete bundle ``folder`` into the cache as the entry for ``digest``.

        Idempotent: when the entry is already there it is returned, and ``folder`` is removed if it
        lies in this cache's staging area (it is a duplicate). A folder on another filesystem is
        copied, not moved.
        """
        if index.digest != digest:
            raise InvalidInput("the pack index does not match the digest it is committed as")
        with self.lock(digest):
            target = self.bundle_path(digest)
            existing = self.get(digest)
            if existing is not None and target.is_dir():
                if _inside(folder, self._staging) and folder.exists():
                    _trash_and_remove(folder)
                return existing
            if existing is not None:
                self._discard(digest)
            elif os.path.lexists(target):  # a folder without a row: a crash before the row was written
                _trash_and_remove(target)
            problem = check_tree(folder, index, None)
            if problem is not None:
                raise Conflict(f"{folder} does not hold the VM its index describes: {problem}")
            try:
                os.rename(folder, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                clone_tree(folder, target)
            try:
                _write_atomic(self._index_file(digest), index.canonical_bytes())
                fingerprint, disk_usage = measure(target, index)
                now = time.time()
                entry = CacheEntry(
                    digest, catalog_id, version, architecture, index.size, disk_usage, now, now, 1, False
                )
                with self._write() as db:
                    db.execute(
                        f"INSERT OR REPLACE INTO entries ({_COLUMNS}, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (*dataclasses.astuple(entry), json.dumps(fingerprint, sort_keys=True)),
                    )
            except BaseException:
                self._discard(digest)
                raise
            return entry

    # ---- chunk reuse --------------------------------------------------------------------------
    def chunk_source(self, index: PackIndex, exclude: str | None = None) -> dict[str, ChunkSource]:
        """Where each chunk of ``index`` that another cached bundle holds can be read.

        Bundles used most recently are preferred (they are the least likely to be evicted). Nothing
        is read here; ``read_chunk`` verifies each chunk when it is used.
        """
        wanted = index.unique_digests()
        found: dict[str, ChunkSource] = {}
        for entry in sorted(self.entries(), key=lru_key, reverse=True):
            if entry.digest == exclude or len(found) == len(wanted):
                continue
            chunk_map = self._chunk_map(entry.digest)
            if not chunk_map:
                continue
            folder = self.bundle_path(entry.digest)
            for chunk_digest in wanted:
                if chunk_digest not in found and chunk_digest in chunk_map:
                    path, offset, size = chunk_map[chunk_digest]
                    found[chunk_digest] = (folder / path, offset, size)
        return found

    def _chunk_map(self, digest: str) -> dict[str, tuple[str, int, int]] | None:
        """chunk digest -> (bundle path, offset, size), parsed once per bundle (bundles never change)."""
        with self._mutex:
            cached = self._chunk_maps.get(digest)
        if cached is not None:
            return cached
        try:
            data = self._index_file(digest).read_bytes()
            index = PackIndex.from_bytes(data)
        except (OSError, InvalidInput):
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            return None
        chunk_map: dict[str, tuple[str, int, int]] = {}
        for entry in index.files:
            for chunk in entry.chunks:
                chunk_map.setdefault(chunk.digest, (entry.path, chunk.offset, chunk.size))
        with self._mutex:
            self._chunk_maps[digest] = chunk_map
        return chunk_map

    def read_chunk(self, where: ChunkSource, expected_digest: str) -> bytes | None:
        """The chunk's raw bytes if they still hash to ``expected_digest``; None otherwise (the bundle
        was evicted or damaged meanwhile), and the caller downloads the chunk instead."""
        path, offset, size = where
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC)
        except OSError:
            return None
        try:
            parts: list[bytes] = []
            got = 0
            while got < size:
                part = os.pread(fd, size - got, offset + got)
                if not part:
                    return None
                parts.append(part)
                got += len(part)
        except OSError:
            return None
        finally:
            os.close(fd)
        data = b"".join(parts)
        return data if hashlib.sha256(data).hexdigest() == expected_digest else None

    # ---- management ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> CacheEntry:
        """An entry by unique digest prefix (at least 8 hex characters) or ``ID:VERSION[:ARCH]``."""
        text = ref.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise InvalidInput(f"{ref[:80]!r} is not ID:VERSION[:ARCH]")
            where = "WHERE catalog_id = ? AND version = ?"
            args: list[Any] = [normalize_catalog_id(parts[0]), normalize_version(parts[1])]
            if len(parts) == 3:
                where += " AND architecture = ?"
                args.append(normalize_architecture(parts[2]))
        else:
            text = text.lower()
            if not _HEX_PREFIX.fullmatch(text):
                raise InvalidInput(
                    f"{ref[:80]!r} is neither a digest prefix (at least {MIN_PREFIX} hex characters) "
                    "nor ID:VERSION[:ARCH]"
                )
            where, args = "WHERE substr(digest, 1, ?) = ?", [len(text), text]
        found = self._select(where + " ORDER BY digest", args)
        if not found:
            raise NotFound(f"nothing in the cache matches {ref[:80]!r}")
        if len(found) > 1:
            names = ", ".join(f"{e.digest[:12]} ({e.catalog_id}:{e.version} {e.architecture})" for e in found[:5])
            raise InvalidInput(f"{ref[:80]!r} matches {len(found)} cached VMs: {names}; give more of the digest")
        return found[0]

    def pin(self, digest_or_prefix: str, pinned: bool = True) -> CacheEntry:
        """Pinned entries are never evicted (``remove`` still removes them)."""
        entry = self.resolve(digest_or_prefix)
        with self._write() as db:
            db.execute("UPDATE entries SET pinned = ? WHERE digest = ?", (int(pinned), entry.digest))
        updated = self.get(entry.digest)
        if updated is None:
            raise NotFound(f"{entry.digest[:12]} was removed from the cache meanwhile")
        return updated

    def remove(self, digest_or_ref: str) -> CacheEntry:
        entry = self.resolve(digest_or_ref)
        with self.lock(entry.digest):
            current = self.get(entry.digest)
            if current is None:
                raise NotFound(f"{entry.digest[:12]} was removed from the cache meanwhile")
            self._discard(entry.digest)
        return current

    def prune(self, *, dry_run: bool = False, incoming: int = 0) -> list[CacheEntry]:
        """Evict what ``plan_eviction`` chooses for the current free space and return it.

        An entry whose lock is held (being materialised or checked right now) is skipped, and the plan
        is made again without it. Also sweeps leftovers of crashes (unless ``dry_run``).
        """
        if dry_run:
            return plan_eviction(self.entries(), self.budget, _free_bytes(self.root), incoming)
        self._sweep()
        evicted: list[CacheEntry] = []
        busy: set[str] = set()
        while True:
            entries = [dataclasses.replace(e, pinned=True) if e.digest in busy else e for e in self.entries()]
            plan = plan_eviction(entries, self.budget, _free_bytes(self.root), incoming)
            replan = False
            for victim in plan:
                with self._try_lock(victim.digest) as locked:
                    if not locked:
                        busy.add(victim.digest)
                        replan = True
                        break
                    current = self.get(victim.digest)
                    if current is None or current.pinned:
                        continue
                    self._discard(victim.digest)
                    evicted.append(current)
                    log.info("evicted %s:%s (%s) from the cache", current.catalog_id, current.version, current.digest)
            if not replan:
                return evicted

    # ---- internals ----------------------------------------------------------------------------
    def _index_file(self, digest: str) -> Path:
        _check_digest(digest)
        return self._bundles / f"{digest}.index.json"

    def _discard(self, digest: str) -> None:
        """Drop an entry; the caller holds its lock. Folder out of sight first, then row, then bytes."""
        folder = self.bundle_path(digest)
        trash = folder.with_name(f"{_TRASH}{digest}-{secrets.token_hex(4)}")
        try:
            os.rename(folder, trash)
            moved = True
        except FileNotFoundError:
            moved = False
        with self._write() as db:
            db.execute("DELETE FROM entries WHERE digest = ?", (digest,))
        self._index_file(digest).unlink(missing_ok=True)
        with self._mutex:
            self._chunk_maps.pop(digest, None)
        if moved:
            remove_tree(trash)

    def _sweep(self) -> None:
        """Remove what crashes left behind: trash, bundle folders or index files without a row, rows
        without a folder. Anything whose lock is held is being worked on and is left alone."""
        known = {e.digest for e in self.entries()}
        for folder in (self._bundles, self._staging):
            for child in list(folder.iterdir()):
                if child.name.startswith(_TRASH):
                    with contextlib.suppress(OSError):
                        remove_tree(child)
        orphans: set[str] = set()
        for child in self._bundles.iterdir():
            name = child.name.removesuffix(".index.json")
            if is_digest(name) and name not in known:
                orphans.add(name)
        for digest in known:
            if not self.bundle_path(digest).is_dir():
                orphans.add(digest)
        for digest in sorted(orphans):
            with self._try_lock(digest) as locked:
                if not locked:
                    continue
                if digest in known and self.bundle_path(digest).is_dir():
                    continue
                if digest not in known and self.get(digest) is not None:
                    continue  # committed meanwhile
                log.info("removing leftovers of %s from the cache", digest[:12])
                self._discard(digest)


# ---- helpers ----------------------------------------------------------------------------------
def _entry(row: Sequence[Any]) -> CacheEntry:
    return CacheEntry(
        digest=str(row[0]),
        catalog_id=str(row[1]),
        version=str(row[2]),
        architecture=str(row[3]),
        size=int(row[4]),
        disk_usage=int(row[5]),
        created_at=float(row[6]),
        last_used=float(row[7]),
        use_count=int(row[8]),
        pinned=bool(row[9]),
    )


def _check_digest(digest: str) -> None:
    """Digests become file names: only exact sha256 hex ever reaches the disk."""
    if not is_digest(digest):
        raise InvalidInput(f"{digest[:80]!r} is not a pack digest (64 lower-case hex characters)")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _trash_and_remove(path: Path) -> None:
    """Rename out of sight first, so nothing half-removed is ever found under the real name."""
    trash = path.with_name(f"{_TRASH}{path.name}-{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    remove_tree(trash)

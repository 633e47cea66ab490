"""The local VM cache: what a pull keeps so that pulling a VM again, or another version of it, costs
as little as the destination's filesystem allows, with every byte of a pull written once.

Two kinds of entry, one per pulled VM (keyed by pack digest); the destination decides which:

* **chunks** (ext4, any filesystem that cannot share blocks with the cache, or another filesystem
  than the cache's): the pull writes the bundle once, straight at its destination, and keeps each
  chunk it downloads in ``chunks/`` exactly as storage served it, a verified zstd object named by
  the sha256 of its raw bytes. A compressed object is about half its raw bytes, so keeping the VM
  costs about half of it on disk and adds no second write of the bundle. Pulling the VM again, or a
  version that shares chunks with it, reads and decompresses those objects instead of downloading.
* **bundle** (the destination can clone the cache's files: XFS or btrfs reflink on the cache's own
  filesystem, APFS ``clonefile``): the pull downloads into ``staging/``, commits the finished bundle
  and clones it out, so its bytes are written once and a second pull is a clone. A bundle entry
  supersedes a chunks entry of the same VM (its own chunk objects are then dropped).

Layout under ``cache_dir()``::

    bundles/<pack digest>/             a bundle entry's folder, exactly as the pack describes it
    bundles/<pack digest>.index.json   every entry's pack index (canonical bytes; a pull of a cached
                                       VM reads it here instead of downloading it)
    chunks/<ab>/<sha256>               chunk objects (zstd frames as stored); ``ab`` = first 2 hex digits
    index.sqlite                       ``entries``: one row per VM (kind, size, use, pin, fingerprints);
                                       ``refs``: which chunk objects each chunks entry, or pull under way, uses
    locks/<pack digest>.lock           per-VM file lock: two pulls of one VM never collide
    staging/<pack digest>              where a bundle pull downloads (the transfer engine owns it)

Commit points. An entry exists when its SQLite row does (and, for a bundle, its folder). A pull
that keeps chunks first *reserves* them (``reserve``): it writes the index file and a ``refs`` row per
chunk without an entry row, so neither an eviction nor a sweep deletes a chunk object it will read
or has just stored. ``commit_chunks`` then writes the entry row and keeps the refs of the objects
that really are there. Everything that changes an entry holds that digest's file lock.

SQLite runs in WAL mode with ``synchronous = NORMAL``: a commit is atomic whenever the process dies;
a power cut may undo the last commits, which leaves files without rows, swept or reused later.

Chunk objects need no fsync and no bookkeeping per write: each is written to a temporary name and
renamed, and every read of one is verified (decompressed, sized and hashed by the transfer engine)
before a byte of it reaches a bundle. One that fails is deleted (``LocalChunks.drop``) and downloaded
again, so a torn or damaged object costs a download, never a wrong VM. A bundle hit is re-checked
cheaply, without hashing (``client.bundle_check``: paths, types, sizes, each file's ``(size,
mtime_ns)``); raw chunks read out of a cached bundle for another version are hashed before use.

Space. The disk bytes of a chunk object are charged to one entry that uses it: a pinned one if any,
else the most recently used (``cache_budget.lru_key``). The entries' figures therefore add up to what
the cache holds, and evicting entries least recently used first frees exactly what they are charged,
so ``plan_eviction`` stays a pure function of the entries. Removing an entry deletes the chunk
objects no other entry or reservation uses, inside the same SQLite write transaction as its rows.
Removing a bundle renames its folder to a hidden trash name first, so a half-deleted bundle is never
seen as a hit. ``prune`` also sweeps what crashes leave: trash, folders and index files without a
row, reservations whose pull is gone (its lock is free), and (listing ``chunks/`` at most once a
day) chunk objects nothing references. A cache that cannot take an object (full disk, no permission)
makes the pull stop keeping, with one warning: a pull never fails for the cache's sake.

Which kind a pull makes, and the order of its steps, is ``client.transfer.pull``'s; reading, checking
and placing chunks is ``client.transfer.download``'s. Budget rules: ``client.cache_budget``.
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
import stat
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from client.bundle_check import check_tree, measure
from client.cache_budget import (
    BUNDLE,
    CHUNKS,
    DEFAULT_KEEP_FREE_BYTES,
    Budget,
    CacheEntry,
    budget_from_env,
    lru_key,
    plan_eviction,
)
from client.clone import clone_tree, remove_tree
from client.direct_io import open_direct, pwrite_direct
from core.errors import Conflict, InvalidInput, NotFound
from core.identity import normalize_architecture, normalize_catalog_id, normalize_version
from core.pack import PackIndex, is_digest

__all__ = [
    "BUNDLE",
    "CHUNKS",
    "DEFAULT_KEEP_FREE_BYTES",
    "Budget",
    "CacheEntry",
    "ChunkSource",
    "LocalChunks",
    "VmCache",
    "budget_from_env",
    "cache_dir",
    "parse_index",
    "plan_eviction",
]

log = logging.getLogger("pdcat.cache")

MIN_PREFIX = 8
_HEX_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},64}}")
_TRASH = ".trash-"
_TMP_SUFFIX = ".tmp"
_STALE_TMP_SECONDS = 3600.0  # a chunk object is written in well under this; older temp files are leftovers
_OBJECT_SWEEP_SECONDS = 86400.0  # how often prune lists every chunk object
_BLOCK = 4096
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_SCHEMA = (
    """
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
        fingerprint  TEXT NOT NULL,
        kind         TEXT NOT NULL DEFAULT 'bundle'
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS refs (
        entry TEXT NOT NULL,
        chunk TEXT NOT NULL,
        size  INTEGER NOT NULL,
        PRIMARY KEY (entry, chunk)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS refs_by_chunk ON refs (chunk, entry, size)",
)
_COLUMNS = "digest, catalog_id, version, architecture, size, disk_usage, created_at, last_used, use_count, pinned, kind"
# Each chunk object is charged to the entry that would be evicted last: see VmCache._charges.
_RANKED = "WITH rank(entry, r) AS (VALUES {values}) "
_CHARGES = (
    _RANKED + "SELECT k.entry, SUM(b.size) FROM ("
    "SELECT r.chunk AS chunk, MAX(k.r) AS top, MAX(r.size) AS size FROM refs r JOIN rank k ON k.entry = r.entry "
    "GROUP BY r.chunk) b JOIN rank k ON k.r = b.top GROUP BY k.entry"
)
_CHARGE_OF_ONE = (
    _RANKED + "SELECT COALESCE(SUM(r.size), 0) FROM refs r WHERE r.entry = ? AND NOT EXISTS ("
    "SELECT 1 FROM refs o JOIN rank k ON k.entry = o.entry WHERE o.chunk = r.chunk AND k.r > ?)"
)

ChunkSource = tuple[Path, int, int]
"""Where a chunk's raw bytes lie in a cached bundle: ``(file, offset, size)``."""


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
        self._chunks = self.root / "chunks"
        self._locks_dir = self.root / "locks"
        self._staging = self.root / "staging"
        for folder in (self._bundles, self._chunks, self._locks_dir, self._staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self._locks: dict[str, filelock.FileLock] = {}
        self._db = sqlite3.connect(
            self.root / "index.sqlite", timeout=30, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # Commits stay atomic, also when the process dies; only a power cut may undo the last ones,
        # which a cache survives (an entry is missing, its files are swept or reused), and a pull no
        # longer waits for an fsync at every row.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._write() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
            if "kind" not in columns:  # a cache made before chunks entries existed: all its entries are bundles
                db.execute("ALTER TABLE entries ADD COLUMN kind TEXT NOT NULL DEFAULT 'bundle'")

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
        """The lock if nobody holds it: not another process, not another thread, and not this very
        thread (a pull holds its own VM's lock while it prunes: that entry is busy too)."""
        lock = self.lock(digest)
        if lock.is_locked:
            yield False
            return
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

    def _select(self, where: str = "", args: Sequence[Any] = (), busy: Collection[str] = ()) -> list[CacheEntry]:
        """Entries with their disk usage: a bundle's as measured, a chunks entry's index file plus the
        chunk objects charged to it (``busy`` entries are charged as if pinned)."""
        with self._mutex:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries e {where}", tuple(args)).fetchall()
        found = [_entry(row) for row in rows]
        mine = [e.digest for e in found if e.kind == CHUNKS]
        if not mine:
            return found
        charges = self._charges(busy, mine if len(mine) <= 2 else None)
        return [dataclasses.replace(e, disk_usage=e.disk_usage + charges.get(e.digest, 0)) for e in found]

    def _charges(self, busy: Collection[str], only: Sequence[str] | None = None) -> dict[str, int]:
        """Disk bytes of chunk objects charged to each entry (all, or ``only`` these).

        Each object is charged to the entry using it that would be evicted last: pinned (or busy)
        ones first, then the most recently used (``lru_key`` backwards). Evicting entries least
        recently used first then frees exactly what they are charged, and the charges add up to
        the objects on disk.
        """
        with self._mutex:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries").fetchall()
        order = sorted((_entry(row) for row in rows), key=lambda e: (e.pinned or e.digest in busy, lru_key(e)))
        rank = {e.digest: r for r, e in enumerate(order)}
        values = ",".join("(?,?)" for _ in order)
        ranked = [x for e in order for x in (e.digest, rank[e.digest])]
        with self._mutex:
            if only is None:
                return {str(d): int(n) for d, n in self._db.execute(_CHARGES.format(values=values), ranked)}
            return {
                d: int(self._db.execute(_CHARGE_OF_ONE.format(values=values), (*ranked, d, rank[d])).fetchone()[0])
                for d in only
            }

    def get(self, digest: str) -> CacheEntry | None:
        found = self._select("WHERE e.digest = ?", (digest,))
        return found[0] if found else None

    def entries(self) -> list[CacheEntry]:
        return self._select("ORDER BY e.created_at, e.digest")

    def usage(self) -> int:
        """Disk bytes of every entry: bundles as measured when committed, chunk objects as stored."""
        return sum(e.disk_usage for e in self.entries())

    def _row(self, digest: str) -> tuple[str, str] | None:
        """``(kind, fingerprint JSON)`` of an entry, without computing any usage."""
        with self._mutex:
            row = self._db.execute("SELECT kind, fingerprint FROM entries WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # ---- hits ---------------------------------------------------------------------------------
    def bundle_path(self, digest: str) -> Path:
        _check_digest(digest)
        return self._bundles / digest

    def cached_index(self, digest: str) -> PackIndex | None:
        """The pack index of ``digest`` if this cache holds it intact (it hashes to the digest)."""
        try:
            return parse_index(self._index_file(digest).read_bytes(), digest)
        except (OSError, InvalidInput):
            return None

    def lookup(self, digest: str, index: PackIndex) -> CacheEntry | None:
        """The usable entry of ``index``, or None; a hit counts as a use.

        A bundle is re-checked cheaply, and removed if it fails (it can never become valid again). A
        chunks entry's objects are verified when a pull reads them, one by one.
        """
        if _digest_of(index) != digest:
            raise InvalidInput("the pack index does not match the digest it is looked up by")
        with self.lock(digest):
            row = self._row(digest)
            if row is None:
                return None
            kind, fingerprint = row
            if kind == BUNDLE:
                problem = check_tree(self.bundle_path(digest), index, _parse_fingerprint(fingerprint))
                if problem is not None:
                    log.warning("cached %s is no longer intact (%s); dropping it", digest[:12], problem)
                    self._discard(digest)
                    return None
            index_file = self._index_file(digest)
            if not index_file.is_file():  # lost in a crash; the index itself is known good
                _write_atomic(index_file, _canonical(index))
            with self._write() as db:
                db.execute(
                    "UPDATE entries SET last_used = ?, use_count = use_count + 1 WHERE digest = ?",
                    (time.time(), digest),
                )
            return self.get(digest)

    def materialize(self, digest: str, dest: Path) -> str:
        """Copy the cached bundle to ``dest`` (which must not exist) by the cheapest method there is."""
        with self.lock(digest):
            src = self.bundle_path(digest)
            row = self._row(digest)
            if row is None or row[0] != BUNDLE or not src.is_dir():
                raise NotFound(f"{digest[:12]} is not in the cache as a bundle")
            dest.parent.mkdir(parents=True, exist_ok=True)
            return clone_tree(src, dest)

    # ---- bundle entries -----------------------------------------------------------------------
    def staging_dir(self, digest: str) -> Path:
        """Where a bundle pull of ``digest`` downloads to; the transfer engine keeps its partial folder
        and journal next to it and resumes from them. Call under ``lock(digest)``.

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
        """Move a complete bundle ``folder`` into the cache as the (bundle) entry for ``digest``.

        Idempotent: when the bundle is already there it is returned, and ``folder`` is removed if it
        lies in this cache's staging area (it is a duplicate). A chunks entry of the same VM is
        replaced. A folder on another filesystem is copied, not moved.
        """
        if _digest_of(index) != digest:
            raise InvalidInput("the pack index does not match the digest it is committed as")
        with self.lock(digest):
            target = self.bundle_path(digest)
            row = self._row(digest)
            if row is not None and row[0] == BUNDLE and target.is_dir():
                if _inside(folder, self._staging) and folder.exists():
                    _trash_and_remove(folder)
                existing = self.get(digest)
                if existing is not None:
                    return existing
            problem = check_tree(folder, index, None)
            if problem is not None:
                raise Conflict(f"{folder} does not hold the VM its index describes: {problem}")
            self._discard(digest)  # a chunks entry, a stale row or a folder without one: all replaced
            try:
                os.rename(folder, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                clone_tree(folder, target)
            try:
                index_file = self._index_file(digest)
                _write_atomic(index_file, _canonical(index))
                fingerprint, disk_usage = measure(target, index)
                disk_usage += _disk_bytes(index_file.stat().st_size)
                now = time.time()
                entry = CacheEntry(
                    digest, catalog_id, version, architecture, index.size, disk_usage, now, now, 1, False, BUNDLE
                )
                with self._write() as db:
                    db.execute(
                        f"INSERT OR REPLACE INTO entries ({_COLUMNS}, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (*dataclasses.astuple(entry), json.dumps(fingerprint, sort_keys=True)),
                    )
            except BaseException:
                self._discard(digest)
                raise
            return entry

    # ---- chunks entries -----------------------------------------------------------------------
    def reserve(self, digest: str, index: PackIndex) -> None:
        """A pull of ``digest`` that keeps chunks is under way: from now on no eviction or sweep
        deletes a chunk object of its index. Call under ``lock(digest)``; ``commit_chunks`` ends it
        (a pull that dies leaves it to the next ``prune``, which drops it once the lock is free)."""
        if _digest_of(index) != digest:
            raise InvalidInput("the pack index does not match the digest it is reserved as")
        index_file = self._index_file(digest)
        if not index_file.is_file():
            _write_atomic(index_file, _canonical(index))
        rows = [(digest, d, _disk_bytes(stored)) for d, stored in index.stored_sizes().items()]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO refs (entry, chunk, size) VALUES (?,?,?)", rows)

    def commit_chunks(
        self, digest: str, index: PackIndex, *, catalog_id: str, version: str, architecture: str
    ) -> CacheEntry | None:
        """Record ``digest`` as a chunks entry holding the chunk objects of its index that are here
        now (their sizes as on disk). Ends the reservation; None (and nothing kept) if there are none.

        A bundle entry of the same VM is left as it is: it is the better copy.
        """
        if _digest_of(index) != digest:
            raise InvalidInput("the pack index does not match the digest it is committed as")
        with self.lock(digest):
            row = self._row(digest)
            if row is not None and row[0] == BUNDLE and self.bundle_path(digest).is_dir():
                with self._write() as db:
                    self._unreference(db, digest)
                existing = self.get(digest)
                if existing is not None:
                    return existing
            present: list[tuple[str, str, int]] = []
            for chunk_digest in index.stored_sizes():
                try:
                    st = os.stat(self._object(chunk_digest))
                except OSError:
                    continue
                present.append((digest, chunk_digest, st.st_blocks * 512))
            if not present:
                self._discard(digest)
                return None
            index_file = self._index_file(digest)
            if not index_file.is_file():
                _write_atomic(index_file, _canonical(index))
            now = time.time()
            with self._mutex:
                old = self._db.execute(
                    "SELECT created_at, last_used, use_count, pinned FROM entries WHERE digest = ?", (digest,)
                ).fetchone()
            created, used, count, pinned = old if old is not None else (now, now, 1, 0)
            with self._write() as db:
                db.execute("DELETE FROM refs WHERE entry = ?", (digest,))
                db.executemany("INSERT INTO refs (entry, chunk, size) VALUES (?,?,?)", present)
                db.execute(
                    f"INSERT OR REPLACE INTO entries ({_COLUMNS}, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        digest,
                        catalog_id,
                        version,
                        architecture,
                        index.size,
                        _disk_bytes(index_file.stat().st_size),
                        created,
                        used,
                        count,
                        pinned,
                        CHUNKS,
                        "{}",
                    ),
                )
            return self.get(digest)

    def release(self, digest: str) -> None:
        """End a reservation whose pull failed for good (bad data, the version gone): its index file
        and the chunk objects nobody else uses go. An entry of ``digest`` stays, minus refs to
        chunk objects that are not there."""
        with self.lock(digest):
            if self._row(digest) is None:
                self._discard(digest)
                return
            with self._write() as db:
                rows = db.execute("SELECT chunk FROM refs WHERE entry = ?", (digest,)).fetchall()
                missing = [(digest, row[0]) for row in rows if not os.path.isfile(self._object(row[0]))]
                db.executemany("DELETE FROM refs WHERE entry = ? AND chunk = ?", missing)

    def local_chunks(self, index: PackIndex, *, exclude: str | None = None, keep: bool = False) -> LocalChunks:
        """What this machine holds of ``index``'s chunks: chunk objects, and raw ranges of cached
        bundles other than ``exclude``. With ``keep``, downloaded chunks are added to the objects.

        Nothing is read here; the transfer engine verifies every chunk it takes from these.
        """
        wanted = index.stored_sizes()
        objects = {d for d in wanted if os.path.isfile(self._object(d))}
        ranges: dict[str, ChunkSource] = {}
        bundles = [e for e in self._select("WHERE e.kind = ?", (BUNDLE,)) if e.digest != exclude]
        for entry in sorted(bundles, key=lru_key, reverse=True):  # most recently used first: evicted last
            if len(ranges) + len(objects) >= len(wanted):
                break
            other = self.cached_index(entry.digest)  # parsed one at a time: memory stays one index's
            if other is None:
                continue
            folder = self.bundle_path(entry.digest)
            sizes = other.unique_digests()
            for file in other.files:
                for chunk in file.chunks:
                    # a piece that is its whole object can be read back as that object (every format-1
                    # chunk; in format 2, a whole cell as a first push cuts it)
                    whole = chunk.object_offset == 0 and chunk.size == sizes[chunk.digest]
                    if whole and chunk.digest in wanted and chunk.digest not in objects and chunk.digest not in ranges:
                        ranges[chunk.digest] = (folder / file.path, chunk.offset, chunk.size)
        return LocalChunks(self._chunks, objects, ranges, keep=keep)

    def _object(self, chunk_digest: str) -> Path:
        return _object_path(self._chunks, chunk_digest)

    # ---- management ---------------------------------------------------------------------------
    def resolve(self, ref: str) -> CacheEntry:
        """An entry by unique digest prefix (at least 8 hex characters) or ``ID:VERSION[:ARCH]``."""
        text = ref.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise InvalidInput(f"{ref[:80]!r} is not ID:VERSION[:ARCH]")
            where = "WHERE e.catalog_id = ? AND e.version = ?"
            args: list[Any] = [normalize_catalog_id(parts[0]), normalize_version(parts[1])]
            if len(parts) == 3:
                where += " AND e.architecture = ?"
                args.append(normalize_architecture(parts[2]))
        else:
            text = text.lower()
            if not _HEX_PREFIX.fullmatch(text):
                raise InvalidInput(
                    f"{ref[:80]!r} is neither a digest prefix (at least {MIN_PREFIX} hex characters) "
                    "nor ID:VERSION[:ARCH]"
                )
            where, args = "WHERE substr(e.digest, 1, ?) = ?", [len(text), text]
        found = self._select(where + " ORDER BY e.digest", args)
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

        An entry whose lock is held (being pulled, materialised or checked right now) is skipped, and
        the plan is made again without it. Also sweeps leftovers of crashes (unless ``dry_run``).
        """
        if dry_run:
            return plan_eviction(self.entries(), self.budget, _free_bytes(self.root), incoming)
        self._sweep()
        evicted: list[CacheEntry] = []
        busy: set[str] = set()
        while True:
            entries = self._select(busy=sorted(busy))
            entries = [dataclasses.replace(e, pinned=True) if e.digest in busy else e for e in entries]
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

    def _unreference(self, db: sqlite3.Connection, digest: str) -> None:
        """Drop the refs of ``digest`` (entry or reservation) and delete the chunk objects nobody else
        references, inside the caller's write transaction: no reservation can claim one meanwhile."""
        mine = [row[0] for row in db.execute("SELECT chunk FROM refs WHERE entry = ?", (digest,))]
        db.execute("DELETE FROM refs WHERE entry = ?", (digest,))
        for chunk_digest in mine:
            if db.execute("SELECT 1 FROM refs WHERE chunk = ? LIMIT 1", (chunk_digest,)).fetchone() is None:
                with contextlib.suppress(OSError):
                    os.unlink(self._object(chunk_digest))

    def _discard(self, digest: str) -> None:
        """Drop an entry or a reservation; the caller holds its lock. Folder out of sight first, then
        rows and unshared chunk objects, then the bundle's bytes."""
        folder = self.bundle_path(digest)
        trash = folder.with_name(f"{_TRASH}{digest}-{secrets.token_hex(4)}")
        try:
            os.rename(folder, trash)
            moved = True
        except FileNotFoundError:
            moved = False
        with self._write() as db:
            db.execute("DELETE FROM entries WHERE digest = ?", (digest,))
            self._unreference(db, digest)
        self._index_file(digest).unlink(missing_ok=True)
        if moved:
            remove_tree(trash)

    def _sweep(self) -> None:
        """Remove what crashes left behind: trash, bundle folders or index files without a row, rows
        without a folder, reservations of pulls that are gone, and chunk objects nothing references.
        Anything whose lock is held is being worked on and is left alone."""
        with self._mutex:
            rows = {str(d): str(k) for d, k in self._db.execute("SELECT digest, kind FROM entries")}
        for folder in (self._bundles, self._staging):
            for child in list(folder.iterdir()):
                if child.name.startswith(_TRASH):
                    with contextlib.suppress(OSError):
                        remove_tree(child)
        orphans: set[str] = set()
        for child in self._bundles.iterdir():
            name = child.name.removesuffix(".index.json")
            if is_digest(name) and name not in rows:
                orphans.add(name)
        for digest, kind in rows.items():
            if kind == BUNDLE and not self.bundle_path(digest).is_dir():
                orphans.add(digest)
        with self._mutex:
            reserved = self._db.execute(
                "SELECT DISTINCT entry FROM refs WHERE entry NOT IN (SELECT digest FROM entries)"
            ).fetchall()
        orphans.update(row[0] for row in reserved)
        for digest in sorted(orphans):
            with self._try_lock(digest) as locked:
                if not locked:
                    continue
                row = self._row(digest)
                if row is not None and (row[0] == CHUNKS or self.bundle_path(digest).is_dir()):
                    continue  # committed meanwhile
                log.info("removing leftovers of %s from the cache", digest[:12])
                self._discard(digest)
        self._sweep_objects()

    def _sweep_objects(self) -> None:
        """Delete chunk objects no entry or reservation references, and stale temporary files.

        Removing an entry or a reservation deletes its unshared objects already; what is left for
        this walk is a write cut short by a crash (a temporary file) or damage from outside, so it
        lists ``chunks/`` at most once a day, not on every pull.
        """
        stamp = self._chunks / ".swept"
        try:
            if time.time() - stamp.stat().st_mtime < _OBJECT_SWEEP_SECONDS:
                return
        except OSError:
            pass
        stamp.touch()
        with self._mutex:
            referenced = {row[0] for row in self._db.execute("SELECT DISTINCT chunk FROM refs")}
        now = time.time()
        unreferenced: list[Path] = []
        for shard in _listdir(self._chunks):
            folder = self._chunks / shard
            if not folder.is_dir():
                continue
            for name in _listdir(folder):
                path = folder / name
                if name.endswith(_TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        if now - os.lstat(path).st_mtime > _STALE_TMP_SECONDS:
                            path.unlink()
                elif name not in referenced:
                    unreferenced.append(path)
        if not unreferenced:
            return
        with self._write() as db:  # checked again inside the write transaction: a pull may have just reserved it
            for path in unreferenced:
                if db.execute("SELECT 1 FROM refs WHERE chunk = ? LIMIT 1", (path.name,)).fetchone() is None:
                    with contextlib.suppress(OSError):
                        path.unlink()


# ---- chunk objects ----------------------------------------------------------------------------
class LocalChunks:
    """The chunks of one index that this machine holds, for one pull: chunk objects (compressed, as
    storage serves them) and raw ranges of cached bundles. Nothing here is trusted: the transfer
    engine verifies every chunk it reads, ``drop``s an object that fails, and ``keep``s the verified
    objects it downloads. Thread-safe: every call is its own file operations."""

    def __init__(self, folder: Path, objects: set[str], ranges: dict[str, ChunkSource], *, keep: bool) -> None:
        self._folder = folder
        self._objects = objects
        self._ranges = ranges
        self._keeping = keep
        self._direct = True  # until the filesystem refuses direct writes (tmpfs, some network filesystems)
        self._warned = threading.Lock()
        self._shards: set[str] = set()  # shard folders known to exist

    def has(self, chunk_digest: str) -> bool:
        """Whether the chunk is expected to be here (it may still turn out missing or damaged)."""
        return chunk_digest in self._objects or chunk_digest in self._ranges

    @property
    def keeping(self) -> bool:
        return self._keeping

    def read_object(self, chunk_digest: str, into: memoryview) -> int | None:
        """Read the chunk object into ``into``; its length, or None if it is not here (or too large)."""
        if chunk_digest not in self._objects:
            return None
        try:
            fd = os.open(_object_path(self._folder, chunk_digest), _READ_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > len(into) or st.st_size == 0:
                return None
            return st.st_size if _read_exactly(fd, into[: st.st_size], 0) else None
        except OSError:
            return None
        finally:
            os.close(fd)

    def read_range(self, chunk_digest: str, into: memoryview) -> bool:
        """Read the chunk's raw bytes from a cached bundle into ``into`` (exactly its size)."""
        where = self._ranges.get(chunk_digest)
        if where is None or where[2] != len(into):
            return False
        path, offset, _size = where
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError:
            return False
        try:
            return _read_exactly(fd, into, offset)
        except OSError:
            return False
        finally:
            os.close(fd)

    def drop(self, chunk_digest: str) -> None:
        """The chunk object failed verification: delete it (the pull downloads the chunk instead)."""
        self._objects.discard(chunk_digest)
        with contextlib.suppress(OSError):
            os.unlink(_object_path(self._folder, chunk_digest))

    def keep(self, chunk_digest: str, blob: memoryview) -> None:
        """Add a verified, downloaded chunk object: written to a temporary name, then renamed. A cache
        that cannot take it (full disk, no permission...) stops keeping for this pull, with one
        warning: the pull itself never fails for the cache's sake."""
        if not self._keeping:
            return
        path = _object_path(self._folder, chunk_digest)
        tmp = path.with_name(f".{chunk_digest}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            if path.parent.name not in self._shards:
                path.parent.mkdir(exist_ok=True)
                self._shards.add(path.parent.name)
            self._write_new(tmp, blob)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if self._warned.acquire(blocking=False):
                log.warning("cannot keep chunks in the cache (%s); pulling on without caching", exc.strerror or exc)
            self._keeping = False
            return
        self._objects.add(chunk_digest)

    def _write_new(self, tmp: Path, blob: memoryview) -> None:
        """Write a new object file. Where the filesystem takes it, directly (``client.direct_io``): the
        pull has just written the same bytes, decompressed, into the VM, and the kept copy is read only
        by a later pull, so it bypasses the page cache (copying it there and writing it back costs a
        pull about as much CPU as decompressing). Elsewhere, or if the filesystem refuses, a buffered
        write."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
        fd = open_direct(tmp, flags) if self._direct else None
        if fd is not None:
            try:
                if pwrite_direct(fd, blob, 0, pad=True):
                    os.ftruncate(fd, len(blob))
                    return
            finally:
                os.close(fd)
            os.unlink(tmp)
        self._direct = False  # refused by this filesystem (or none here): buffered from now on
        fd = os.open(tmp, flags, 0o644)
        try:
            written = 0
            while written < len(blob):
                written += os.write(fd, blob[written:])
        finally:
            os.close(fd)


def _object_path(folder: Path, chunk_digest: str) -> Path:
    if not is_digest(chunk_digest):
        raise InvalidInput(f"{chunk_digest[:80]!r} is not a chunk digest")
    return folder / chunk_digest[:2] / chunk_digest


def _read_exactly(fd: int, into: memoryview, offset: int) -> bool:
    got = 0
    while got < len(into):
        part = into[got:]
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [part], offset + got)
        else:  # pragma: no cover - platforms without preadv
            data = os.pread(fd, len(part), offset + got)
            part[: len(data)] = data
            n = len(data)
        if n <= 0:
            return False
        got += n
    return True


# ---- helpers ----------------------------------------------------------------------------------
_known: dict[int, tuple[weakref.ref[PackIndex], str, bytes | None]] = {}
_known_lock = threading.Lock()


def parse_index(data: bytes, digest: str) -> PackIndex:
    """The pack index in ``data``, which must hash to ``digest`` (``InvalidInput`` otherwise).

    The cache remembers both for as long as the index object lives: it then neither serialises the
    index again to check its digest nor to write its file (for a large VM that would cost as much
    memory again as the index itself).
    """
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput("the pack index does not match its digest")
    index = PackIndex.from_bytes(data)
    _remember(index, digest, data)
    return index


def _digest_of(index: PackIndex) -> str:
    """``index.digest``, computed once per index object (it serialises the whole index)."""
    with _known_lock:
        known = _known.get(id(index))
    if known is not None and known[0]() is index:
        return known[1]
    digest = index.digest
    _remember(index, digest, None)
    return digest


def _canonical(index: PackIndex) -> bytes:
    with _known_lock:
        known = _known.get(id(index))
    if known is not None and known[0]() is index and known[2] is not None:
        return known[2]
    return index.canonical_bytes()


def _remember(index: PackIndex, digest: str, data: bytes | None) -> None:
    """Only for a digest that was checked (computed, or the bytes the index was parsed from hash to it)."""
    with _known_lock:
        for key in [k for k, (ref, _, _) in _known.items() if ref() is None]:
            del _known[key]
        _known[id(index)] = (weakref.ref(index), digest, data)


def _disk_bytes(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


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
        kind=str(row[10]),
    )


def _parse_fingerprint(text: str) -> dict[str, list[int]]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
    """Write ``path`` whole or not at all (no fsync: an index file is checked against its digest
    whenever it is read, so a torn one after a power cut is merely missing)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
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

"""SQLite adapters of the embedded backend: manifests, API keys and the embedded server's users.

One database file; one connection per thread, because the embedded HTTP server is multi-threaded
and a sqlite3 connection must not be used by two threads at once. Every write runs inside
``BEGIN IMMEDIATE``: the write lock is taken *before* the conditional check reads anything, so
"check the etag, then write" is one atomic step across threads and across processes (two servers on
one data folder). WAL lets readers proceed while a writer holds the lock, and ``busy_timeout`` makes
writers queue instead of failing. A database that stays locked past the timeout, or a broken file,
surfaces as :class:`core.errors.Unavailable`; nothing sqlite-specific leaks out.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from core.identity import ManifestKey
from core.manifest import Manifest
from core.ports import ApiKeyRecord, ApiKeyStore, ManifestQuery, ManifestStore, Stored
from core.users import User

__all__ = [
    "SCHEMA_VERSION",
    "SqliteApiKeyStore",
    "SqliteDatabase",
    "SqliteManifestStore",
    "SqliteUserStore",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0

_KEY_COLUMNS = """
    catalog_id   TEXT NOT NULL COLLATE BINARY,
    version      TEXT NOT NULL COLLATE BINARY,
    architecture TEXT NOT NULL COLLATE BINARY"""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS manifests ({_KEY_COLUMNS},
        etag   TEXT NOT NULL,
        record TEXT NOT NULL CHECK (json_valid(record)),
        PRIMARY KEY (catalog_id, version, architecture)
    ) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS manifest_tags ({_KEY_COLUMNS},
        tag TEXT NOT NULL COLLATE BINARY,
        PRIMARY KEY (catalog_id, version, architecture, tag),
        FOREIGN KEY (catalog_id, version, architecture)
            REFERENCES manifests (catalog_id, version, architecture) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS manifest_tags_by_tag ON manifest_tags (tag, catalog_id, version, architecture)",
    "CREATE INDEX IF NOT EXISTS manifests_by_architecture ON manifests (architecture, catalog_id, version)",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT NOT NULL PRIMARY KEY,
        record TEXT NOT NULL CHECK (json_valid(record))
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS users (
        username TEXT NOT NULL PRIMARY KEY,
        record   TEXT NOT NULL CHECK (json_valid(record))
    ) WITHOUT ROWID""",
)


@contextmanager
def _translated() -> Iterator[None]:
    """Map sqlite's operational failures to ``Unavailable``; programming errors stay bugs."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        logger.warning("sqlite operation failed: %s", exc)
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unavailable("the catalog database is busy; try again") from exc
        raise Unavailable("the catalog database is unavailable") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
            raise
        logger.error("sqlite database error: %s", exc)
        raise Unavailable("the catalog database is unavailable") from exc


def _make_private(path: Path) -> None:
    """The database file exists with mode 0600 whatever the umask (an older one is tightened), so
    SQLite, which gives its -wal and -shm files the database file's mode, makes those 0600 too."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            side = path.with_name(path.name + suffix)
            if os.stat(side).st_mode & 0o777 != 0o600:
                os.chmod(side, 0o600)
        except FileNotFoundError:
            pass


class SqliteDatabase:
    """Owns the SQLite file and hands each thread its own connection.

    The schema is created on first use (idempotent, under ``BEGIN IMMEDIATE`` so that two processes
    starting together do not trip over each other). Connections of threads that have ended are
    closed the next time a thread opens one, so a thread-per-request server does not leak them.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._generation = 0
        self._schema_ready = False

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteDatabase({str(self._path)!r})"

    def __enter__(self) -> SqliteDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- connections ----------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode: transactions are explicit)."""
        cached = getattr(self._local, "cached", None)
        if cached is not None and cached[0] == self._generation:
            conn: sqlite3.Connection = cached[1]
            return conn
        with _translated():
            conn = self._open()
        with self._lock:
            self._reap_dead_threads()
            self._connections[threading.current_thread()] = conn
            self._local.cached = (self._generation, conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(self._path)
        # check_same_thread=False only so close() may close other threads' connections at
        # shutdown; in normal use each connection stays on the thread that opened it.
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            # NORMAL is safe in WAL mode (no corruption on crash, only the last commits may be lost
            # on power failure) and keeps a commit from costing an fsync.
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._schema_ready:
                self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if self._schema_ready:
                return
            begin_immediate(conn)
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version) SELECT ? WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
                    (SCHEMA_VERSION,),
                )
                (version,) = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                if version != SCHEMA_VERSION:
                    raise Unavailable(
                        f"the catalog database has schema version {version}; "
                        f"this pdcat understands version {SCHEMA_VERSION}"
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._schema_ready = True

    def _reap_dead_threads(self) -> None:
        for thread, conn in builtins.list(self._connections.items()):
            if not thread.is_alive():
                del self._connections[thread]
                conn.close()

    def close(self) -> None:
        """Close every connection this object opened; a later call opens fresh ones."""
        with self._lock:
            self._generation += 1
            connections = builtins.list(self._connections.values())
            self._connections.clear()
        self._local.cached = None
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing is best effort
                logger.debug("closing a sqlite connection failed: %s", exc)

    # ---- statements -----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its first statement.

        Commits when the block ends normally, rolls back on any exception (including the
        ``Conflict`` a conditional write raises).
        """
        conn = self.connection()
        with _translated():
            begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for single-statement reads (each statement sees one consistent snapshot)."""
        conn = self.connection()
        with _translated():
            yield conn


def begin_immediate(conn: sqlite3.Connection, timeout: float = BUSY_TIMEOUT_S) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``timeout`` for the write lock.

    SQLite's busy handler should make ``BEGIN IMMEDIATE`` wait while another writer holds the lock,
    yet one CI run under load saw "database is locked" in a race of eight creates, so a loser got a
    503 instead of its ``Conflict`` (tests/contract/test_ports.py). Which statement failed, and why
    the handler did not wait, is not known: 120 races here did not repeat it. A refusal of ``BEGIN``
    is asked again until ``timeout``, which is what the busy timeout promises anyway.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _new_etag() -> str:
    return uuid.uuid4().hex


def _key_params(key: ManifestKey) -> tuple[str, str, str]:
    return (key.catalog_id, key.version, key.architecture)


_WHERE_KEY = "catalog_id = ? AND version = ? AND architecture = ?"


class SqliteManifestStore(ManifestStore):
    """Manifests as JSON records, with a side table of tags kept in sync in the same transaction."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"SqliteManifestStore({self._db!r})"

    def get(self, key: ManifestKey) -> Stored | None:
        with self._db.reading() as conn:
            row = conn.execute(f"SELECT record, etag FROM manifests WHERE {_WHERE_KEY}", _key_params(key)).fetchone()
        if row is None:
            return None
        return Stored(Manifest.from_record(json.loads(row[0])), row[1])

    def create(self, manifest: Manifest) -> str:
        etag = _new_etag()
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO manifests (catalog_id, version, architecture, etag, record) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (catalog_id, version, architecture) DO NOTHING",
                (*_key_params(manifest.key), etag, _dump(manifest.to_record())),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"{manifest.key} already exists")
            self._write_tags(conn, manifest)
        return etag

    def replace(self, manifest: Manifest, etag: str) -> str:
        new_etag = _new_etag()
        with self._db.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE manifests SET etag = ?, record = ? WHERE {_WHERE_KEY} AND etag = ?",
                (new_etag, _dump(manifest.to_record()), *_key_params(manifest.key), etag),
            )
            if cursor.rowcount != 1:
                if self._exists(conn, manifest.key):
                    raise Conflict(f"{manifest.key} was changed by someone else; reload and retry")
                raise Conflict(f"{manifest.key} no longer exists")
            conn.execute(f"DELETE FROM manifest_tags WHERE {_WHERE_KEY}", _key_params(manifest.key))
            self._write_tags(conn, manifest)
        return new_etag

    def delete(self, key: ManifestKey, etag: str | None = None) -> None:
        with self._db.transaction() as conn:
            # Tags go with the row (ON DELETE CASCADE).
            if etag is None:
                conn.execute(f"DELETE FROM manifests WHERE {_WHERE_KEY}", _key_params(key))
                return
            cursor = conn.execute(f"DELETE FROM manifests WHERE {_WHERE_KEY} AND etag = ?", (*_key_params(key), etag))
            if cursor.rowcount != 1 and self._exists(conn, key):
                raise Conflict(f"{key} was changed by someone else; reload and retry")

    def query(self, query: ManifestQuery) -> builtins.list[Manifest]:
        if query.limit < 0:
            raise InvalidInput("limit must not be negative")
        if query.limit == 0:
            return []
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if query.catalog_id is not None:
            where.append("m.catalog_id = ?")
            params.append(query.catalog_id)
        if query.architecture is not None:
            where.append("m.architecture = ?")
            params.append(query.architecture)
        if query.tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM manifest_tags t WHERE t.catalog_id = m.catalog_id"
                " AND t.version = m.version AND t.architecture = m.architecture AND t.tag = ?)"
            )
            params.append(query.tag)
        if query.after is not None:
            where.append("(m.catalog_id, m.version, m.architecture) > (?, ?, ?)")
            params.extend(_key_params(query.after))
        sql = "SELECT m.record FROM manifests m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.catalog_id COLLATE BINARY, m.version COLLATE BINARY, m.architecture COLLATE BINARY LIMIT ?"
        params.append(query.limit)
        with self._db.reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [Manifest.from_record(json.loads(row[0])) for row in rows]

    def record_download(self, key: ManifestKey, by: str, at: str) -> None:
        # One UPDATE: the increment happens inside SQLite, so concurrent downloads never lose a count.
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE manifests SET etag = ?, record = json_set(record,"
                " '$.download_count', coalesce(json_extract(record, '$.download_count'), 0) + 1,"
                " '$.last_downloaded_at', ?, '$.last_downloaded_by', ?)"
                f" WHERE {_WHERE_KEY}",
                (_new_etag(), at, by, *_key_params(key)),
            )
            if cursor.rowcount != 1:
                raise NotFound(f"{key} does not exist")

    def close(self) -> None:
        self._db.close()

    # ---- helpers --------------------------------------------------------------------------
    @staticmethod
    def _exists(conn: sqlite3.Connection, key: ManifestKey) -> bool:
        row = conn.execute(f"SELECT 1 FROM manifests WHERE {_WHERE_KEY}", _key_params(key)).fetchone()
        return row is not None

    @staticmethod
    def _write_tags(conn: sqlite3.Connection, manifest: Manifest) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO manifest_tags (catalog_id, version, architecture, tag) VALUES (?, ?, ?, ?)",
            [(*_key_params(manifest.key), tag) for tag in manifest.tags],
        )


def _api_key_from_record(data: dict[str, Any]) -> ApiKeyRecord:
    known = {f.name for f in fields(ApiKeyRecord)}
    values = {k: v for k, v in data.items() if k in known}
    values["roles"] = builtins.list(data.get("roles") or [])
    values["claims"] = builtins.list(data.get("claims") or [])
    return ApiKeyRecord(**values)


class SqliteApiKeyStore(ApiKeyStore):
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"SqliteApiKeyStore({self._db!r})"

    def create(self, record: ApiKeyRecord) -> None:
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO api_keys (key_id, record) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
                (record.key_id, _dump(asdict(record))),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"API key {record.key_id!r} already exists")

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT record FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return None if row is None else _api_key_from_record(json.loads(row[0]))

    def put(self, record: ApiKeyRecord) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, record) VALUES (?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET record = excluded.record",
                (record.key_id, _dump(asdict(record))),
            )

    def list(self) -> builtins.list[ApiKeyRecord]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT record FROM api_keys ORDER BY key_id").fetchall()
        return [_api_key_from_record(json.loads(row[0])) for row in rows]

    def close(self) -> None:
        self._db.close()


def _user(record: str) -> User:
    """A stored user record; fields a newer pdcat wrote and this one does not know are left out."""
    known = {f.name for f in fields(User)}
    return User(**{k: v for k, v in json.loads(record).items() if k in known})


class SqliteUserStore:
    """The embedded server's users (bootstrapped on first start, hence :meth:`count`)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"SqliteUserStore({self._db!r})"

    def get(self, username: str) -> User | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT record FROM users WHERE username = ?", (username,)).fetchone()
        return None if row is None else _user(row[0])

    def create(self, user: User) -> None:
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO users (username, record) VALUES (?, ?) ON CONFLICT (username) DO NOTHING",
                (user.username, _dump(asdict(user))),
            )
            if cursor.rowcount != 1:
                raise Conflict(f"user {user.username!r} already exists")

    def count(self) -> int:
        with self._db.reading() as conn:
            (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        return int(count)

    def list_all(self) -> list[User]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT record FROM users ORDER BY username").fetchall()
        return [_user(row[0]) for row in rows]

    def replace(self, user: User, previous: User) -> None:
        with self._db.transaction() as conn:  # the write lock is held from the read to the write
            row = conn.execute("SELECT record FROM users WHERE username = ?", (user.username,)).fetchone()
            if row is None:
                raise NotFound(f"no user {user.username!r}")
            if _user(row[0]) != previous:
                raise Conflict(f"user {user.username!r} was changed by another request meanwhile; try again")
            conn.execute("UPDATE users SET record = ? WHERE username = ?", (_dump(asdict(user)), user.username))

    def delete(self, username: str) -> None:
        with self._db.transaction() as conn:
            if conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount != 1:
                raise NotFound(f"no user {username!r}")

    def close(self) -> None:
        self._db.close()

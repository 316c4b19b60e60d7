"""The SQLite store: one database file per data directory.

Pragmas are set where the connection opens; transactions are explicit
(``BEGIN IMMEDIATE``, so a writer takes the write lock before it reads and two
processes can never interleave a read-then-write); every driver error leaves
this module as a :class:`~moorage.errors.StoreError`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Literal

from moorage.errors import StoreError
from moorage.store.schema import MIGRATIONS

logger = logging.getLogger(__name__)

DB_FILENAME = "moorage.db"
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data directory (owner-only) if needed and return its path."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data directory {data_dir}: {exc}") from exc
    return data_dir


class Database:
    """One connection to one SQLite file, shared by the threads of a process.

    A lock serialises use of the connection inside this process; SQLite's own
    locking serialises writers across processes.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 30.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(
                f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}"
            )
        self.path = path
        self._lock = threading.RLock()
        try:
            # Create the file owner-only before SQLite opens it; the -wal and
            # -shm files SQLite makes later copy these permissions.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._conn = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout,
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        with self.transaction() as conn:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"database schema version {current} is newer than this moorage "
                    f"knows ({len(MIGRATIONS)}); upgrade moorage"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in _split_statements(MIGRATIONS[version - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
                logger.info(
                    "migrated database to schema version %d",
                    version,
                    extra={"action": "migrate"},
                )
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('install_id', ?)",
                (uuid.uuid4().hex,),
            )

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction: commits on success, rolls back on any error."""
        return _Transaction(self, "BEGIN IMMEDIATE")

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """A consistent read (one snapshot) without taking the write lock."""
        return _Transaction(self, "BEGIN DEFERRED")

    def meta(self, key: str) -> str | None:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Transaction:
    """``with``-block of :meth:`Database.transaction` and
    :meth:`Database.reading`: holds the connection's lock from BEGIN to
    COMMIT (or ROLLBACK, when the block raises; a driver error raised in
    the block leaves as a StoreError, the rest as they are).  A class rather than a
    generator-based context manager: every queue operation opens one, and
    this costs a fraction of a generator's set-up and tear-down."""

    __slots__ = ("_db", "_begin")

    def __init__(self, db: Database, begin: str) -> None:
        self._db = db
        self._begin = begin

    def __enter__(self) -> sqlite3.Connection:
        db = self._db
        db._lock.acquire()
        try:
            db._conn.execute(self._begin)
        except sqlite3.Error as exc:
            db._lock.release()
            raise StoreError(f"cannot begin a transaction: {exc}") from exc
        except BaseException:
            db._lock.release()
            raise
        return db._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn = self._db._conn
        try:
            if exc_type is not None:
                if conn.in_transaction:  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"database error: {exc}") from exc
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot commit: {error}") from error
        finally:
            self._db._lock.release()


def _split_statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``executescript`` would
    commit the surrounding transaction, so statements run one by one)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise StoreError(f"incomplete statement in migration: {buffer.strip()[:60]}")

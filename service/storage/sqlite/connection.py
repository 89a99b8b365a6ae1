"""Connections and transactions of the SQLite store, and the lookups every part of it shares.

WAL mode, one connection per thread, writes in `BEGIN IMMEDIATE` transactions.
`synchronous=FULL` so that a sample acknowledged to a client survives a crash of the process
or of the machine.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from service.storage.errors import NotFoundError, StoreConflict, StoreFullError, StoreOpenError
from service.storage.records import SubjectRecord
from service.storage.sqlite.schema import ADDED_COLUMNS, SCHEMA, now


class SQLiteConnection:
    """The base the SQLite store's parts share: one database file, its connections and locks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # One writer at a time inside this process; BEGIN IMMEDIATE orders us against other
        # processes (e.g. `opengallery keys create` while the server runs).
        self._write_lock = threading.Lock()
        self._full_since: float | None = None  # monotonic time of a write failed for space
        self._space_checked = 0.0
        try:
            with self._write_lock:
                self._connection().executescript(SCHEMA)
                self._add_missing_columns(self._connection())
        except sqlite3.DatabaseError as error:
            self.close()
            raise StoreOpenError(f"{self.path}: cannot open the database: {error}") from None

    @staticmethod
    def _add_missing_columns(connection: sqlite3.Connection) -> None:
        """Columns added to tables after their first release: databases made before gain them."""
        for table, column, declaration in ADDED_COLUMNS:
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        with self._write_lock:
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    with suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except (sqlite3.Error, OSError) as error:
                if not _out_of_space(error):
                    raise
                if connection.in_transaction:  # a failed COMMIT leaves it open
                    with suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                if self._full_since is None:
                    self._full_since = time.monotonic()
                raise StoreFullError(
                    f"{self.path}: no space left for this write ({error}); nothing was written"
                ) from None
            self._full_since = None

    def space_exhausted(self) -> bool:
        if self._full_since is None:
            return False
        now = time.monotonic()
        if now - self._space_checked >= 1.0:
            self._space_checked = now
            # A write that needs new pages and reaches the disk (the WAL) at COMMIT.
            with suppress(StoreFullError), self._write() as connection:
                connection.execute("CREATE TABLE IF NOT EXISTS space_probe (data BLOB)")
                connection.execute("INSERT INTO space_probe VALUES (zeroblob(65536))")
                connection.execute("DELETE FROM space_probe")
        return self._full_since is not None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # A read transaction: one consistent snapshot for multi-statement reads.
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with suppress(sqlite3.ProgrammingError):
                    connection.close()
            self._connections.clear()
        self._local = threading.local()

    @staticmethod
    def _gallery_row(connection: sqlite3.Connection, name: str) -> sqlite3.Row | tuple:
        row = connection.execute(
            "SELECT id, version FROM galleries WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFoundError("gallery", name)
        return row

    @staticmethod
    def _bump(connection: sqlite3.Connection, gallery_pk: int) -> int:
        connection.execute("UPDATE galleries SET version = version + 1 WHERE id = ?", (gallery_pk,))
        return int(
            connection.execute(
                "SELECT version FROM galleries WHERE id = ?", (gallery_pk,)
            ).fetchone()[0]
        )

    @staticmethod
    def _check_model(
        connection: sqlite3.Connection, gallery_pk: int, gallery: str, model_id: str
    ) -> None:
        """StoreConflict unless the gallery is on `model_id` (another process may have switched
        it since the caller embedded with `model_id`)."""
        current = connection.execute(
            "SELECT model_id FROM galleries WHERE id = ?", (gallery_pk,)
        ).fetchone()[0]
        if current != model_id:
            raise StoreConflict(f"gallery {gallery!r} is on {current}, not {model_id}")

    @staticmethod
    def _log_change(
        connection: sqlite3.Connection,
        kind: str,
        gallery: str | None = None,
        *,
        subject_pk: int | None = None,
        subject_id: str | None = None,
        sample_ids: Sequence[int] = (),
        model_id: str | None = None,
        key_id: int | None = None,
    ) -> None:
        """Append a change to the log, in the caller's write transaction: SQLite has one
        writer at a time, so the log's order is the commit order."""
        connection.execute(
            "INSERT INTO changes (kind, gallery, subject_pk, subject_id, sample_ids, model_id,"
            " key_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                gallery,
                subject_pk,
                subject_id,
                json.dumps([int(i) for i in sample_ids]),
                model_id,
                key_id,
                now(),
            ),
        )

    @staticmethod
    def _subject_pk(connection: sqlite3.Connection, gallery_pk: int, subject_id: str) -> int:
        row = connection.execute(
            "SELECT id FROM subjects WHERE gallery_id = ? AND subject_id = ?",
            (gallery_pk, subject_id),
        ).fetchone()
        if row is None:
            raise NotFoundError("subject", subject_id)
        return int(row[0])

    @staticmethod
    def _subject_record(connection: sqlite3.Connection, pk: int) -> SubjectRecord:
        row = connection.execute(
            "SELECT s.id, s.subject_id, s.metadata, s.created, s.updated,"
            " (SELECT COUNT(*) FROM samples WHERE subject_pk = s.id)"
            " FROM subjects s WHERE s.id = ?",
            (pk,),
        ).fetchone()
        return SubjectRecord(
            pk=row[0],
            subject_id=row[1],
            metadata=json.loads(row[2]),
            created=row[3],
            updated=row[4],
            sample_count=row[5],
        )


def _out_of_space(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
        "database or disk is full" in str(error)
    )

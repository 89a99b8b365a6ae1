"""Connections and transactions of the PostgreSQL store, and the lookups every part shares.

A psycopg 3 connection pool of autocommit connections; each store call takes one connection
for one explicit transaction. Writes run at READ COMMITTED and lock the gallery's row first
(`SELECT ... FOR UPDATE`), so the mutations of one gallery are serialised as SQLite's single
writer serialises them: each gets its own version, in commit order. Multi-statement reads run
in a REPEATABLE READ, READ ONLY transaction: one snapshot, as SQLite's read transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from service.storage.errors import (
    NotFoundError,
    StoreConfigError,
    StoreConflict,
    StoreUnavailable,
)
from service.storage.postgres.schema import apply_schema, iso
from service.storage.records import SubjectRecord
from service.storage.urls import redact_url

CONNECT_TIMEOUT_S = 10  # libpq's connect_timeout, unless the URL sets its own
POOL_SIZE = 16  # at most this many concurrent store calls per process; the rest wait
POOL_TIMEOUT_S = 10.0  # waiting longer for a connection is "unavailable"
# The advisory lock that orders the change log ("opengallery changes" as an int64), and the
# channel notified when a change commits.
CHANGES_LOCK = 0x6F67_5F63_6867_6573
CHANGES_CHANNEL = "opengallery_changes"


def libpq_url(url: str) -> str:
    """The URL libpq understands: SQLAlchemy's `postgresql+psycopg://` loses its driver."""
    scheme, separator, rest = url.partition("://")
    return f"postgresql://{rest}" if separator and "+" in scheme else url


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _is_unavailable(error: psycopg.OperationalError) -> bool:
    """Lost or refused connections, a pool without free connections, a server shutting down;
    not a serialisation failure or a deadlock (those are OperationalErrors too)."""
    state = getattr(error, "sqlstate", None)
    return state is None or state.startswith(("08", "57P"))


class PostgresConnection:
    """The base the PostgreSQL store's parts share: one database, its connection pool."""

    def __init__(
        self, url: str, *, pool_size: int | None = None, pool_timeout: float | None = None
    ) -> None:
        shown_url = self.shown_url = redact_url(url)  # for messages: no credentials
        self._url = url  # to connect (the change log's listener); never shown
        self._wait_lock = threading.Lock()
        conninfo = libpq_url(url)
        try:
            options = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:  # libpq's message may quote the password
            raise StoreConfigError(f"not a valid PostgreSQL URL: {shown_url}") from None
        timeout = {} if "connect_timeout" in options else {"connect_timeout": CONNECT_TIMEOUT_S}
        try:
            with psycopg.connect(conninfo, autocommit=True, **timeout) as connection:
                apply_schema(connection, shown_url)
        except psycopg.OperationalError as error:
            raise StoreUnavailable(
                f"cannot reach the database at {shown_url}: {_one_line(error)}"
            ) from None
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size or POOL_SIZE,
            timeout=pool_timeout or POOL_TIMEOUT_S,
            kwargs={"autocommit": True, **timeout},
            # A connection is checked as it leaves the pool (one round trip): after a
            # database restart the dead ones are replaced instead of failing a request.
            check=ConnectionPool.check_connection,
            name="opengallery",
            open=True,
        )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a lost database surfaces as StoreUnavailable."""
        try:
            with self._pool.connection() as connection:
                yield connection
        except psycopg.OperationalError as error:
            if not _is_unavailable(error):
                raise
            raise StoreUnavailable(
                f"the database at {self.shown_url} is unavailable: {_one_line(error)}"
            ) from error

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as connection, connection.transaction():
            yield connection

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as connection, connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield connection

    def _fetchone(self, query: str, parameters: tuple = ()) -> tuple | None:
        """One row of a single-statement read (no explicit transaction needed)."""
        with self._connection() as connection:
            return connection.execute(query, parameters).fetchone()  # type: ignore[arg-type]

    def _fetchall(self, query: str, parameters: tuple = ()) -> list[tuple]:
        with self._connection() as connection:
            return connection.execute(query, parameters).fetchall()  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.close()

    @staticmethod
    def _gallery_row(
        connection: psycopg.Connection[Any], name: str, *, lock: bool = False
    ) -> tuple[int, int]:
        """(id, version) of a gallery; `lock` holds its row until the transaction ends."""
        row = connection.execute(
            "SELECT id, version FROM galleries WHERE name = %s" + (" FOR UPDATE" if lock else ""),
            (name,),
        ).fetchone()
        if row is None:
            raise NotFoundError("gallery", name)
        return int(row[0]), int(row[1])

    @staticmethod
    def _bump(connection: psycopg.Connection[Any], gallery_pk: int) -> int:
        row = connection.execute(
            "UPDATE galleries SET version = version + 1 WHERE id = %s RETURNING version",
            (gallery_pk,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    @staticmethod
    def _check_model(
        connection: psycopg.Connection[Any], gallery_pk: int, gallery: str, model_id: str
    ) -> None:
        """StoreConflict unless the gallery is on `model_id` (another replica may have switched
        it since the caller embedded with `model_id`). The caller holds the gallery's row."""
        row = connection.execute(
            "SELECT model_id FROM galleries WHERE id = %s", (gallery_pk,)
        ).fetchone()
        if row is None or row[0] != model_id:
            current = None if row is None else row[0]
            raise StoreConflict(f"gallery {gallery!r} is on {current}, not {model_id}")

    @staticmethod
    def _log_change(
        connection: psycopg.Connection[Any],
        kind: str,
        gallery: str | None = None,
        *,
        subject_pk: int | None = None,
        subject_id: str | None = None,
        sample_ids: Sequence[int] = (),
        model_id: str | None = None,
        key_id: int | None = None,
    ) -> None:
        """Append a change to the log, as the last statement of the caller's write transaction.

        The advisory lock is held until the transaction ends, so seq numbers are handed out in
        commit order (an identity alone hands them out in insert order: a transaction could
        commit seq 5 after a reader has seen seq 6). Writes of different galleries serialise
        only for this last step and their commit. The notification is sent at commit.
        """
        connection.execute(
            "SELECT pg_advisory_xact_lock(%s), pg_notify(%s, '')", (CHANGES_LOCK, CHANGES_CHANNEL)
        )
        connection.execute(
            "INSERT INTO changes (kind, gallery, subject_pk, subject_id, sample_ids, model_id,"
            " key_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (kind, gallery, subject_pk, subject_id, [int(i) for i in sample_ids], model_id, key_id),
        )

    @staticmethod
    def _subject_pk(connection: psycopg.Connection[Any], gallery_pk: int, subject_id: str) -> int:
        row = connection.execute(
            "SELECT id FROM subjects WHERE gallery_id = %s AND subject_id = %s",
            (gallery_pk, subject_id),
        ).fetchone()
        if row is None:
            raise NotFoundError("subject", subject_id)
        return int(row[0])

    SUBJECT_COLUMNS = (
        "s.id, s.subject_id, s.metadata, s.created, s.updated,"
        " (SELECT COUNT(*) FROM samples WHERE subject_pk = s.id)"
    )

    @staticmethod
    def _subject_from_row(row: tuple) -> SubjectRecord:
        return SubjectRecord(
            pk=int(row[0]),
            subject_id=row[1],
            metadata=row[2],
            created=iso(row[3]),
            updated=iso(row[4]),
            sample_count=int(row[5]),
        )

    @classmethod
    def _subject_record(cls, connection: psycopg.Connection[Any], pk: int) -> SubjectRecord:
        row = connection.execute(
            f"SELECT {cls.SUBJECT_COLUMNS} FROM subjects s WHERE s.id = %s", (pk,)
        ).fetchone()
        assert row is not None
        return cls._subject_from_row(row)

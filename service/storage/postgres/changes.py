"""The change log in PostgreSQL: read through the pool; waited on with LISTEN on a connection
of its own (a notification is sent when each change commits)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np
import psycopg

from service.storage.errors import StoreUnavailable
from service.storage.postgres.connection import (
    CHANGES_CHANNEL,
    CONNECT_TIMEOUT_S,
    PostgresConnection,
    _one_line,
    libpq_url,
)
from service.storage.postgres.schema import iso
from service.storage.records import ChangeRecord, GalleryEmbeddings


class PostgresChanges(PostgresConnection):
    _listener: psycopg.Connection[Any] | None = None  # LISTENing, used under _wait_lock

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        # A transaction-level advisory lock: it goes with the transaction, and with the
        # connection if its process dies. The key is the name's hash, apart from CHANGES_LOCK.
        digest = hashlib.sha256(f"opengallery exclusive {name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with self._connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            yield

    def last_change(self) -> int:
        row = self._fetchone("SELECT COALESCE(MAX(seq), 0) FROM changes")
        assert row is not None
        return int(row[0])

    def changes_after(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = self._fetchall(
            "SELECT seq, kind, gallery, subject_pk, subject_id, sample_ids, model_id, key_id,"
            " created FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
            (seq, limit),
        )
        return [
            ChangeRecord(
                int(row[0]),
                row[1],
                row[2],
                None if row[3] is None else int(row[3]),
                row[4],
                tuple(int(i) for i in row[5]),
                row[6],
                None if row[7] is None else int(row[7]),
                iso(row[8]),
            )
            for row in rows
        ]

    def prune_changes(self, older_than_s: float, limit: int = 10_000) -> int:
        with self._write() as connection:
            cursor = connection.execute(
                "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes"
                " WHERE created < now() - make_interval(secs => %s)"
                " AND seq < (SELECT MAX(seq) FROM changes) ORDER BY seq LIMIT %s)",
                (older_than_s, limit),
            )
            return int(cursor.rowcount)

    def _listening(self) -> psycopg.Connection[Any]:
        """The connection listening on the changes channel, opened on first use and again
        after it was lost (notifications sent meanwhile are lost: the caller reads the log)."""
        if self._listener is None or self._listener.closed:
            try:
                connection = psycopg.connect(
                    libpq_url(self._url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            except psycopg.OperationalError as error:
                raise StoreUnavailable(
                    f"the database at {self.shown_url} is unavailable: {_one_line(error)}"
                ) from None
            connection.execute(f"LISTEN {CHANGES_CHANNEL}")
            self._listener = connection
        return self._listener

    def wait_for_changes(self, seq: int, timeout: float) -> bool:
        with self._wait_lock:
            try:
                # Listening before reading the log: a change committed after the read is
                # notified on this connection, so no wake-up falls between the two.
                listener = self._listening()
                if self.last_change() > seq:
                    for _ in listener.notifies(timeout=0):  # consumed: already read
                        pass
                    return True
                for _ in listener.notifies(timeout=timeout, stop_after=1):
                    return True
                return False
            except psycopg.Error as error:  # the connection lost, or closed under us
                self._close_listener()
                raise StoreUnavailable(
                    f"the database at {self.shown_url} is unavailable: {_one_line(error)}"
                ) from None

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(psycopg.Error):
                listener.close()

    def close(self) -> None:
        self._close_listener()
        super().close()

    def load_sample_embeddings(
        self, gallery: str, model_id: str, sample_ids: Sequence[int]
    ) -> GalleryEmbeddings:
        ids = sorted({int(i) for i in sample_ids})
        with self._read() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery)
            rows = (
                connection.cursor(binary=True)
                .execute(
                    "SELECT s.id, s.subject_pk, t.subject_id, e.dim, e.vector FROM samples s"
                    " JOIN subjects t ON t.id = s.subject_pk"
                    " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = %s"
                    " WHERE s.gallery_id = %s AND s.id = ANY(%s::bigint[]) ORDER BY s.id",
                    (model_id, gallery_pk, ids),
                )
                .fetchall()
            )
        count = len(rows)
        dim = int(rows[0][3]) if rows else 0
        vectors = (
            np.frombuffer(b"".join(row[4] for row in rows), dtype="<f4")
            .astype(np.float32)
            .reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return GalleryEmbeddings(
            int(version),
            np.fromiter((row[0] for row in rows), dtype=np.int64, count=count),
            np.fromiter((row[1] for row in rows), dtype=np.int64, count=count),
            vectors,
            {int(row[1]): str(row[2]) for row in rows},
        )

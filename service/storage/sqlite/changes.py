"""The change log in SQLite: read by the replicas' followers, polled (SQLite cannot notify)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import numpy as np

from service.storage.locking import lock_file
from service.storage.records import ChangeRecord, GalleryEmbeddings
from service.storage.sqlite.connection import SQLiteConnection

# SQLite cannot notify another process: a follower polls the log this often (one indexed read).
POLL_INTERVAL_S = 0.1
_IN_CHUNK = 500  # ids per "IN (...)": under SQLite's bound on query parameters


class SQLiteChanges(SQLiteConnection):
    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        # The processes of one SQLite database share its machine: an flock on a file beside
        # it. A fresh open per call, so threads of one process exclude each other too.
        directory = self.path.parent / f"{self.path.name}.locks"
        directory.mkdir(exist_ok=True)
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        handle = lock_file(directory / digest)
        assert handle is not None  # a waiting lock is always taken
        with handle:
            yield

    def last_change(self) -> int:
        # MAX of the rowid is one step down the table's b-tree: cheap enough to poll.
        row = self._connection().execute("SELECT MAX(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def changes_after(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        rows = (
            self._connection()
            .execute(
                "SELECT seq, kind, gallery, subject_pk, subject_id, sample_ids, model_id, key_id,"
                " created FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )
        return [
            ChangeRecord(
                int(row[0]),
                row[1],
                row[2],
                None if row[3] is None else int(row[3]),
                row[4],
                tuple(int(i) for i in json.loads(row[5])),
                row[6],
                None if row[7] is None else int(row[7]),
                row[8],
            )
            for row in rows
        ]

    def prune_changes(self, older_than_s: float, limit: int = 10_000) -> int:
        cutoff = (datetime.now(UTC) - timedelta(seconds=older_than_s)).isoformat(
            timespec="milliseconds"
        )
        with self._write() as connection:
            cursor = connection.execute(
                "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE created < ?"
                " AND seq < (SELECT MAX(seq) FROM changes) ORDER BY seq LIMIT ?)",
                (cutoff, limit),
            )
            return int(cursor.rowcount)

    def wait_for_changes(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.last_change() <= seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_INTERVAL_S, remaining))
        return True

    def load_sample_embeddings(
        self, gallery: str, model_id: str, sample_ids: Sequence[int]
    ) -> GalleryEmbeddings:
        ids = sorted({int(i) for i in sample_ids})
        rows: list[tuple] = []
        with self._read() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery)
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows += connection.execute(
                    "SELECT s.id, s.subject_pk, t.subject_id, e.dim, e.vector FROM samples s"
                    " JOIN subjects t ON t.id = s.subject_pk"
                    " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = ?"
                    f" WHERE s.gallery_id = ? AND s.id IN ({marks}) ORDER BY s.id",
                    (model_id, gallery_pk, *chunk),
                ).fetchall()
        count = len(rows)
        dim = int(rows[0][3]) if rows else 0
        vectors = (
            np.frombuffer(b"".join(row[4] for row in rows), dtype=np.float32).reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return GalleryEmbeddings(
            int(version),
            np.fromiter((row[0] for row in rows), dtype=np.int64, count=count),
            np.fromiter((row[1] for row in rows), dtype=np.int64, count=count),
            vectors.copy(),
            {int(row[1]): str(row[2]) for row in rows},
        )

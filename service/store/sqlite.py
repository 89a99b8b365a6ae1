"""SQLite store: WAL mode, one connection per thread, writes in `BEGIN IMMEDIATE` transactions.

`synchronous=FULL` so that a sample acknowledged to a client survives a crash of the process
or of the machine. Embeddings live in their own table keyed by (sample, model): a gallery's
samples can hold embeddings of two models while it migrates (issue 5), and the index of a
gallery is built from exactly one model's rows.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.store.base import (
    AddedSample,
    AlreadyExistsError,
    ApiKeyRecord,
    GalleryEmbeddings,
    GalleryRecord,
    JobRecord,
    NewSample,
    NotFoundError,
    SampleRecord,
    Store,
    StoreConflict,
    StoredImage,
    SubjectRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    fpir REAL NOT NULL,
    scoring TEXT NOT NULL,
    keep_images INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    UNIQUE (gallery_id, subject_id)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_pk INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    source TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    image BLOB,
    created TEXT NOT NULL,
    UNIQUE (subject_pk, content_sha256)
);
CREATE INDEX IF NOT EXISTS samples_by_gallery ON samples (gallery_id);
CREATE TABLE IF NOT EXISTS embeddings (
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sample_id, model_id)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    name TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    gallery TEXT NOT NULL,
    source_model TEXT NOT NULL,
    target_model TEXT NOT NULL,
    status TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # One writer at a time inside this process; BEGIN IMMEDIATE orders us against other
        # processes (e.g. `opengallery keys create` while the server runs).
        self._write_lock = threading.Lock()
        with self._write_lock:
            self._connection().executescript(SCHEMA)

    # -- connections and transactions --
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
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

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

    # -- helpers --
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

    _GALLERY_COLUMNS = (
        "g.name, g.model_id, g.fpir, g.scoring, g.keep_images, g.version, g.created,"
        " (SELECT COUNT(*) FROM subjects WHERE gallery_id = g.id),"
        " (SELECT COUNT(*) FROM samples WHERE gallery_id = g.id)"
    )

    @staticmethod
    def _gallery_record(row: tuple) -> GalleryRecord:
        return GalleryRecord(
            name=row[0],
            model_id=row[1],
            fpir=row[2],
            scoring=row[3],
            keep_images=bool(row[4]),
            version=row[5],
            created=row[6],
            subject_count=row[7],
            sample_count=row[8],
        )

    # -- galleries --
    def create_gallery(
        self, name: str, model_id: str, fpir: float, scoring: str, keep_images: bool
    ) -> GalleryRecord:
        with self._write() as connection:
            try:
                connection.execute(
                    "INSERT INTO galleries (name, model_id, fpir, scoring, keep_images, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, model_id, fpir, scoring, int(keep_images), _now()),
                )
            except sqlite3.IntegrityError as error:
                raise AlreadyExistsError(f"gallery {name!r} already exists") from error
        record = self.get_gallery(name)
        assert record is not None
        return record

    def get_gallery(self, name: str) -> GalleryRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {self._GALLERY_COLUMNS} FROM galleries g WHERE g.name = ?", (name,))
            .fetchone()
        )
        return None if row is None else self._gallery_record(row)

    def list_galleries(self) -> list[GalleryRecord]:
        rows = (
            self._connection()
            .execute(f"SELECT {self._GALLERY_COLUMNS} FROM galleries g ORDER BY g.name")
            .fetchall()
        )
        return [self._gallery_record(row) for row in rows]

    def delete_gallery(self, name: str) -> bool:
        with self._write() as connection:
            cursor = connection.execute("DELETE FROM galleries WHERE name = ?", (name,))
            return cursor.rowcount > 0

    # -- subjects --
    def put_subject(
        self, gallery: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> tuple[SubjectRecord, bool, int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            now = _now()
            row = connection.execute(
                "SELECT id FROM subjects WHERE gallery_id = ? AND subject_id = ?",
                (gallery_pk, subject_id),
            ).fetchone()
            if row is None:
                cursor = connection.execute(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata, created, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (gallery_pk, subject_id, json.dumps(metadata or {}), now, now),
                )
                pk, created = int(cursor.lastrowid or 0), True
            else:
                pk, created = int(row[0]), False
                if metadata is not None:
                    connection.execute(
                        "UPDATE subjects SET metadata = ?, updated = ? WHERE id = ?",
                        (json.dumps(metadata), now, pk),
                    )
            version = self._bump(connection, gallery_pk)
            return self._subject_record(connection, pk), created, version

    def get_subject(self, gallery: str, subject_id: str) -> SubjectRecord | None:
        with self._read() as connection:
            try:
                gallery_pk = self._gallery_row(connection, gallery)[0]
                pk = self._subject_pk(connection, gallery_pk, subject_id)
            except NotFoundError:
                return None
            return self._subject_record(connection, pk)

    def list_subjects(self, gallery: str, limit: int, after: str | None) -> list[SubjectRecord]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT s.id, s.subject_id, s.metadata, s.created, s.updated,"
                " (SELECT COUNT(*) FROM samples WHERE subject_pk = s.id)"
                " FROM subjects s WHERE s.gallery_id = ? AND s.subject_id > ?"
                " ORDER BY s.subject_id LIMIT ?",
                (gallery_pk, after if after is not None else "", limit),
            ).fetchall()
        return [
            SubjectRecord(
                pk=row[0],
                subject_id=row[1],
                metadata=json.loads(row[2]),
                created=row[3],
                updated=row[4],
                sample_count=row[5],
            )
            for row in rows
        ]

    def delete_subject(self, gallery: str, subject_id: str) -> tuple[int, list[int], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            sample_ids = [
                int(row[0])
                for row in connection.execute(
                    "SELECT id FROM samples WHERE subject_pk = ? ORDER BY id", (pk,)
                ).fetchall()
            ]
            connection.execute("DELETE FROM subjects WHERE id = ?", (pk,))
            return pk, sample_ids, self._bump(connection, gallery_pk)

    # -- samples --
    def add_samples(
        self, gallery: str, subject_id: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[SubjectRecord, list[AddedSample], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            added: list[AddedSample] = []
            now = _now()
            for sample in samples:
                existing = connection.execute(
                    "SELECT id FROM samples WHERE subject_pk = ? AND content_sha256 = ?",
                    (pk, sample.content_sha256),
                ).fetchone()
                if existing is not None:
                    added.append(AddedSample(int(existing[0]), created=False))
                    continue
                cursor = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        pk,
                        gallery_pk,
                        model_id,
                        sample.source,
                        sample.content_sha256,
                        sample.image,
                        now,
                    ),
                )
                sample_id = int(cursor.lastrowid or 0)
                vector = np.ascontiguousarray(sample.embedding, dtype=np.float32)
                connection.execute(
                    "INSERT INTO embeddings (sample_id, model_id, dim, vector) VALUES (?, ?, ?, ?)",
                    (sample_id, model_id, int(vector.shape[0]), vector.tobytes()),
                )
                added.append(AddedSample(sample_id, created=True))
            version = (
                self._bump(connection, gallery_pk)
                if any(item.created for item in added)
                else int(self._gallery_row(connection, gallery)[1])
            )
            return self._subject_record(connection, pk), added, version

    def bulk_enrol(
        self, gallery: str, model_id: str, items: Sequence[tuple[str, NewSample]]
    ) -> int:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            now = _now()
            connection.executemany(
                "INSERT INTO subjects (gallery_id, subject_id, metadata, created, updated)"
                " VALUES (?, ?, '{}', ?, ?) ON CONFLICT (gallery_id, subject_id) DO NOTHING",
                (
                    (gallery_pk, subject_id, now, now)
                    for subject_id in dict.fromkeys(subject_id for subject_id, _ in items)
                ),
            )
            subject_pks = dict(
                connection.execute(
                    "SELECT subject_id, id FROM subjects WHERE gallery_id = ?", (gallery_pk,)
                ).fetchall()
            )
            for subject_id, sample in items:
                cursor = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image, created) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (subject_pk, content_sha256) DO NOTHING",
                    (
                        subject_pks[subject_id],
                        gallery_pk,
                        model_id,
                        sample.source,
                        sample.content_sha256,
                        sample.image,
                        now,
                    ),
                )
                if cursor.rowcount:
                    vector = np.ascontiguousarray(sample.embedding, dtype=np.float32)
                    connection.execute(
                        "INSERT INTO embeddings (sample_id, model_id, dim, vector)"
                        " VALUES (?, ?, ?, ?)",
                        (cursor.lastrowid, model_id, int(vector.shape[0]), vector.tobytes()),
                    )
            return self._bump(connection, gallery_pk)

    def list_samples(self, gallery: str, subject_id: str) -> list[SampleRecord]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            rows = connection.execute(
                "SELECT id, model_id, source, content_sha256, image IS NOT NULL, created"
                " FROM samples WHERE subject_pk = ? ORDER BY id",
                (pk,),
            ).fetchall()
        return [
            SampleRecord(
                sample_id=row[0],
                subject_id=subject_id,
                model_id=row[1],
                source=row[2],
                content_sha256=row[3],
                has_image=bool(row[4]),
                created=row[5],
            )
            for row in rows
        ]

    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> tuple[int, int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            cursor = connection.execute(
                "DELETE FROM samples WHERE id = ? AND subject_pk = ?", (sample_id, pk)
            )
            if cursor.rowcount == 0:
                raise NotFoundError("sample", sample_id)
            return pk, self._bump(connection, gallery_pk)

    def load_embeddings(self, gallery: str, model_id: str) -> GalleryEmbeddings:
        with self._read() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery)
            subjects = {
                int(pk): str(subject_id)
                for pk, subject_id in connection.execute(
                    "SELECT id, subject_id FROM subjects WHERE gallery_id = ?", (gallery_pk,)
                )
            }
            rows = connection.execute(
                "SELECT s.id, s.subject_pk, e.dim, e.vector FROM samples s"
                " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = ?"
                " WHERE s.gallery_id = ? ORDER BY s.id",
                (model_id, gallery_pk),
            ).fetchall()
        count = len(rows)
        dim = int(rows[0][2]) if rows else 0
        sample_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=count)
        subject_pks = np.fromiter((row[1] for row in rows), dtype=np.int64, count=count)
        vectors = (
            np.frombuffer(b"".join(row[3] for row in rows), dtype=np.float32).reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return GalleryEmbeddings(int(version), sample_ids, subject_pks, vectors.copy(), subjects)

    # -- API keys --
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord:
        with self._write() as connection:
            cursor = connection.execute(
                "INSERT INTO api_keys (key_hash, scope, name, created) VALUES (?, ?, ?, ?)",
                (key_hash, scope, name, _now()),
            )
            key_id = int(cursor.lastrowid or 0)
        record = self.find_api_key(key_hash)
        assert record is not None and record.key_id == key_id
        return record

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = (
            self._connection()
            .execute(
                "SELECT id, scope, name, created FROM api_keys WHERE key_hash = ?", (key_hash,)
            )
            .fetchone()
        )
        return None if row is None else ApiKeyRecord(row[0], row[1], row[2], row[3])

    def count_api_keys(self, scope: str | None = None) -> int:
        if scope is None:
            row = self._connection().execute("SELECT COUNT(*) FROM api_keys").fetchone()
        else:
            row = (
                self._connection()
                .execute("SELECT COUNT(*) FROM api_keys WHERE scope = ?", (scope,))
                .fetchone()
            )
        return int(row[0])

    # -- models --
    def register_model(self, model_id: str, path: str) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO models (model_id, path, created) VALUES (?, ?, ?)"
                " ON CONFLICT (model_id) DO UPDATE SET path = excluded.path",
                (model_id, path, _now()),
            )

    def registered_models(self) -> dict[str, str]:
        rows = self._connection().execute("SELECT model_id, path FROM models").fetchall()
        return {str(model_id): str(path) for model_id, path in rows}

    # -- migrations (issue 5): shadow embeddings, the atomic switch, persisted jobs --
    def count_samples_without_image(self, gallery: str) -> tuple[int, int]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            total, missing = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(image IS NULL), 0) FROM samples"
                " WHERE gallery_id = ?",
                (gallery_pk,),
            ).fetchone()
        return int(total), int(missing)

    def count_samples_missing_embedding(self, gallery: str, model_id: str) -> int:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            row = connection.execute(
                "SELECT COUNT(*) FROM samples s WHERE s.gallery_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.sample_id = s.id AND e.model_id = ?)",
                (gallery_pk, model_id),
            ).fetchone()
        return int(row[0])

    def images_missing_embedding(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[StoredImage]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT s.id, s.image FROM samples s WHERE s.gallery_id = ? AND s.id > ?"
                " AND NOT EXISTS (SELECT 1 FROM embeddings e"
                " WHERE e.sample_id = s.id AND e.model_id = ?) ORDER BY s.id LIMIT ?",
                (gallery_pk, after_id, model_id, limit),
            ).fetchall()
        return [StoredImage(int(row[0]), None if row[1] is None else bytes(row[1])) for row in rows]

    def put_embeddings(self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._write() as connection:
            for sample_id, vector in zip(sample_ids, vectors, strict=True):
                row = np.ascontiguousarray(vector, dtype=np.float32)
                # A sample deleted meanwhile gets no embedding (the SELECT finds no row).
                connection.execute(
                    "INSERT OR REPLACE INTO embeddings (sample_id, model_id, dim, vector)"
                    " SELECT id, ?, ?, ? FROM samples WHERE id = ?",
                    (model_id, int(row.shape[0]), row.tobytes(), int(sample_id)),
                )

    def drop_embeddings(self, gallery: str, model_id: str) -> None:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            connection.execute(
                "DELETE FROM embeddings WHERE model_id = ? AND sample_id IN"
                " (SELECT id FROM samples WHERE gallery_id = ?)",
                (model_id, gallery_pk),
            )

    def switch_gallery_model(
        self, gallery: str, source_model: str, target_model: str, job_id: str | None
    ) -> int:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            current = connection.execute(
                "SELECT model_id FROM galleries WHERE id = ?", (gallery_pk,)
            ).fetchone()[0]
            if current != source_model:
                raise StoreConflict(f"gallery {gallery!r} is on {current}, not {source_model}")
            missing = connection.execute(
                "SELECT COUNT(*) FROM samples s WHERE s.gallery_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.sample_id = s.id AND e.model_id = ?)",
                (gallery_pk, target_model),
            ).fetchone()[0]
            if missing:
                raise StoreConflict(f"{missing} samples have no {target_model} embedding yet")
            connection.execute(
                "DELETE FROM embeddings WHERE model_id != ? AND sample_id IN"
                " (SELECT id FROM samples WHERE gallery_id = ?)",
                (target_model, gallery_pk),
            )
            connection.execute(
                "UPDATE samples SET model_id = ? WHERE gallery_id = ?", (target_model, gallery_pk)
            )
            connection.execute(
                "UPDATE galleries SET model_id = ? WHERE id = ?", (target_model, gallery_pk)
            )
            if job_id is not None:
                connection.execute(
                    "UPDATE jobs SET status = 'succeeded', done = total, updated = ? WHERE id = ?",
                    (_now(), job_id),
                )
            return self._bump(connection, gallery_pk)

    _JOB_COLUMNS = (
        "id, kind, gallery, source_model, target_model, status, done, total, error, attempts,"
        " created, updated"
    )

    def create_job(
        self, job_id: str, kind: str, gallery: str, source_model: str, target_model: str
    ) -> JobRecord:
        with self._write() as connection:
            running = connection.execute(
                "SELECT id FROM jobs WHERE gallery = ? AND status = 'running'", (gallery,)
            ).fetchone()
            if running is not None:
                raise StoreConflict(f"job {running[0]} is already migrating gallery {gallery!r}")
            now = _now()
            connection.execute(
                f"INSERT INTO jobs ({self._JOB_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, 'running', 0, 0, NULL, 1, ?, ?)",
                (job_id, kind, gallery, source_model, target_model, now, now),
            )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else JobRecord(*row)

    def list_jobs(self, status: str | None = None) -> list[JobRecord]:
        query = f"SELECT {self._JOB_COLUMNS} FROM jobs"
        parameters: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            parameters = (status,)
        rows = self._connection().execute(query + " ORDER BY created", parameters).fetchall()
        return [JobRecord(*row) for row in rows]

    def update_job(
        self,
        job_id: str,
        *,
        done: int | None = None,
        total: int | None = None,
        status: str | None = None,
        error: str | None = None,
        attempt: bool = False,
    ) -> None:
        with self._write() as connection:
            connection.execute(
                "UPDATE jobs SET done = COALESCE(?, done), total = COALESCE(?, total),"
                " status = COALESCE(?, status), error = COALESCE(?, error),"
                " attempts = attempts + ?, updated = ? WHERE id = ?",
                (done, total, status, error, int(attempt), _now(), job_id),
            )

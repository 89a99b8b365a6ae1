"""Samples and their embeddings in SQLite: enrolment and loading a gallery's vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.errors import NotFoundError
from service.storage.protocols.changes import SAMPLES_ADDED, SAMPLES_REMOVED
from service.storage.records import (
    AddedSample,
    BulkAdded,
    BulkEnrolled,
    GalleryEmbeddings,
    NewSample,
    SampleRecord,
    SubjectRecord,
)
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now

_IN_CHUNK = 500  # ids per "IN (...)": under SQLite's bound on query parameters


class SQLiteSamples(SQLiteConnection):
    def add_samples(
        self, gallery: str, subject_id: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[SubjectRecord, list[AddedSample], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            self._check_model(connection, gallery_pk, gallery, model_id)
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
            fresh = [item.sample_id for item in added if item.created]
            if fresh:
                version = self._bump(connection, gallery_pk)
                self._log_change(connection, SAMPLES_ADDED, gallery, sample_ids=fresh)
            else:
                version = int(self._gallery_row(connection, gallery)[1])
            return self._subject_record(connection, pk), added, version

    def bulk_enrol(
        self,
        gallery: str,
        model_id: str,
        items: Sequence[tuple[str, NewSample]],
        *,
        create_subjects: bool = True,
    ) -> BulkEnrolled:
        with self._write() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery)
            self._check_model(connection, gallery_pk, gallery, model_id)
            now = _now()
            subject_ids = list(dict.fromkeys(subject_id for subject_id, _ in items))
            if create_subjects:
                connection.executemany(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata, created, updated)"
                    " VALUES (?, ?, '{}', ?, ?) ON CONFLICT (gallery_id, subject_id) DO NOTHING",
                    ((gallery_pk, subject_id, now, now) for subject_id in subject_ids),
                )
            subject_pks: dict[str, int] = {}
            for start in range(0, len(subject_ids), _IN_CHUNK):
                chunk = subject_ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                subject_pks.update(
                    connection.execute(
                        f"SELECT subject_id, id FROM subjects WHERE gallery_id = ?"
                        f" AND subject_id IN ({marks})",
                        (gallery_pk, *chunk),
                    ).fetchall()
                )
            added: list[BulkAdded] = []
            embeddings: list[tuple[int, str, int, bytes]] = []
            for subject_id, sample in items:
                pk = subject_pks.get(subject_id)
                if pk is None:
                    added.append(BulkAdded(None, None, created=False))
                    continue
                cursor = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image, created) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (subject_pk, content_sha256) DO NOTHING",
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
                if not cursor.rowcount:
                    existing = connection.execute(
                        "SELECT id FROM samples WHERE subject_pk = ? AND content_sha256 = ?",
                        (pk, sample.content_sha256),
                    ).fetchone()
                    added.append(BulkAdded(pk, int(existing[0]), created=False))
                    continue
                vector = np.ascontiguousarray(sample.embedding, dtype=np.float32)
                sample_id = int(cursor.lastrowid or 0)
                embeddings.append((sample_id, model_id, int(vector.shape[0]), vector.tobytes()))
                added.append(BulkAdded(pk, sample_id, created=True))
            connection.executemany(
                "INSERT INTO embeddings (sample_id, model_id, dim, vector) VALUES (?, ?, ?, ?)",
                embeddings,
            )
            fresh = [int(item.sample_id) for item in added if item.created and item.sample_id]
            if fresh:
                version = self._bump(connection, gallery_pk)
                self._log_change(connection, SAMPLES_ADDED, gallery, sample_ids=fresh)
            return BulkEnrolled(added, int(version))

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

    def get_sample_image(self, gallery: str, subject_id: str, sample_id: int) -> bytes | None:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            row = connection.execute(
                "SELECT image FROM samples WHERE id = ? AND subject_pk = ?", (sample_id, pk)
            ).fetchone()
        if row is None:
            raise NotFoundError("sample", sample_id)
        return None if row[0] is None else bytes(row[0])

    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> tuple[int, int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            cursor = connection.execute(
                "DELETE FROM samples WHERE id = ? AND subject_pk = ?", (sample_id, pk)
            )
            if cursor.rowcount == 0:
                raise NotFoundError("sample", sample_id)
            version = self._bump(connection, gallery_pk)
            self._log_change(
                connection,
                SAMPLES_REMOVED,
                gallery,
                subject_pk=pk,
                subject_id=subject_id,
                sample_ids=[sample_id],
            )
            return pk, version

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

"""A gallery's own calibration set in SQLite: probes, their kept images and embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.protocols.changes import CALIBRATION_CHANGED
from service.storage.records import (
    AddedSample,
    CalibrationEmbeddings,
    CalibrationSampleRecord,
    NewSample,
    StoredImage,
)
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteCalibration(SQLiteConnection):
    def add_calibration_samples(
        self, gallery: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[list[AddedSample], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            self._check_model(connection, gallery_pk, gallery, model_id)
            added: list[AddedSample] = []
            now = _now()
            for sample in samples:
                existing = connection.execute(
                    "SELECT id FROM calibration_samples"
                    " WHERE gallery_id = ? AND content_sha256 = ?",
                    (gallery_pk, sample.content_sha256),
                ).fetchone()
                if existing is not None:
                    added.append(AddedSample(int(existing[0]), created=False))
                    continue
                cursor = connection.execute(
                    "INSERT INTO calibration_samples (gallery_id, source, content_sha256, image,"
                    " created) VALUES (?, ?, ?, ?, ?)",
                    (gallery_pk, sample.source, sample.content_sha256, sample.image, now),
                )
                sample_id = int(cursor.lastrowid or 0)
                vector = np.ascontiguousarray(sample.embedding, dtype=np.float32)
                connection.execute(
                    "INSERT INTO calibration_embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (?, ?, ?, ?)",
                    (sample_id, model_id, int(vector.shape[0]), vector.tobytes()),
                )
                added.append(AddedSample(sample_id, created=True))
            if any(item.created for item in added):
                self._bump(connection, gallery_pk)
                self._log_change(connection, CALIBRATION_CHANGED, gallery)
            size = connection.execute(
                "SELECT COUNT(*) FROM calibration_samples WHERE gallery_id = ?", (gallery_pk,)
            ).fetchone()[0]
            return added, int(size)

    def count_calibration_samples(self, gallery: str) -> tuple[int, int]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            total, missing = connection.execute(
                "SELECT COUNT(*), COALESCE(SUM(image IS NULL), 0) FROM calibration_samples"
                " WHERE gallery_id = ?",
                (gallery_pk,),
            ).fetchone()
        return int(total), int(missing)

    def list_calibration_samples(
        self, gallery: str, after_id: int, limit: int
    ) -> list[CalibrationSampleRecord]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT id, source, content_sha256, image IS NOT NULL, created"
                " FROM calibration_samples WHERE gallery_id = ? AND id > ? ORDER BY id LIMIT ?",
                (gallery_pk, after_id, limit),
            ).fetchall()
        return [
            CalibrationSampleRecord(int(row[0]), row[1], row[2], bool(row[3]), row[4])
            for row in rows
        ]

    def load_calibration(self, gallery: str, model_id: str) -> CalibrationEmbeddings:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT c.id, e.dim, e.vector FROM calibration_samples c"
                " JOIN calibration_embeddings e ON e.sample_id = c.id AND e.model_id = ?"
                " WHERE c.gallery_id = ? ORDER BY c.id",
                (model_id, gallery_pk),
            ).fetchall()
        count = len(rows)
        dim = int(rows[0][1]) if rows else 0
        sample_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=count)
        vectors = (
            np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float32).reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return CalibrationEmbeddings(sample_ids, vectors.copy())

    def clear_calibration(self, gallery: str) -> int:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            cursor = connection.execute(
                "DELETE FROM calibration_samples WHERE gallery_id = ?", (gallery_pk,)
            )
            if cursor.rowcount:
                self._bump(connection, gallery_pk)
                self._log_change(connection, CALIBRATION_CHANGED, gallery)
            return int(cursor.rowcount)

    def calibration_images_missing_embedding(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[StoredImage]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT c.id, c.image FROM calibration_samples c WHERE c.gallery_id = ?"
                " AND c.id > ? AND NOT EXISTS (SELECT 1 FROM calibration_embeddings e"
                " WHERE e.sample_id = c.id AND e.model_id = ?) ORDER BY c.id LIMIT ?",
                (gallery_pk, after_id, model_id, limit),
            ).fetchall()
        return [StoredImage(int(row[0]), None if row[1] is None else bytes(row[1])) for row in rows]

    def put_calibration_embeddings(
        self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray
    ) -> None:
        with self._write() as connection:
            for sample_id, vector in zip(sample_ids, vectors, strict=True):
                row = np.ascontiguousarray(vector, dtype=np.float32)
                # A probe deleted meanwhile gets no embedding (the SELECT finds no row).
                connection.execute(
                    "INSERT OR REPLACE INTO calibration_embeddings (sample_id, model_id, dim,"
                    " vector) SELECT id, ?, ?, ? FROM calibration_samples WHERE id = ?",
                    (model_id, int(row.shape[0]), row.tobytes(), int(sample_id)),
                )

"""A gallery's own calibration set in PostgreSQL: probes, their kept images and embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.samples import vector_bytes
from service.storage.postgres.schema import iso
from service.storage.protocols.changes import CALIBRATION_CHANGED
from service.storage.records import (
    AddedSample,
    CalibrationEmbeddings,
    CalibrationSampleRecord,
    NewSample,
    StoredImage,
)


class PostgresCalibration(PostgresConnection):
    def add_calibration_samples(
        self, gallery: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[list[AddedSample], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            self._check_model(connection, gallery_pk, gallery, model_id)
            added: list[AddedSample] = []
            for sample in samples:
                existing = connection.execute(
                    "SELECT id FROM calibration_samples"
                    " WHERE gallery_id = %s AND content_sha256 = %s",
                    (gallery_pk, sample.content_sha256),
                ).fetchone()
                if existing is not None:
                    added.append(AddedSample(int(existing[0]), created=False))
                    continue
                row = connection.execute(
                    "INSERT INTO calibration_samples (gallery_id, source, content_sha256, image)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (gallery_pk, sample.source, sample.content_sha256, sample.image),
                ).fetchone()
                assert row is not None
                vector = np.asarray(sample.embedding)
                connection.execute(
                    "INSERT INTO calibration_embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (%s, %s, %s, %s)",
                    (int(row[0]), model_id, int(vector.shape[0]), vector_bytes(vector)),
                )
                added.append(AddedSample(int(row[0]), created=True))
            size = connection.execute(
                "SELECT COUNT(*) FROM calibration_samples WHERE gallery_id = %s", (gallery_pk,)
            ).fetchone()
            if any(item.created for item in added):
                self._bump(connection, gallery_pk)
                self._log_change(connection, CALIBRATION_CHANGED, gallery)
            return added, int(size[0]) if size else 0

    def count_calibration_samples(self, gallery: str) -> tuple[int, int]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            row = connection.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE image IS NULL) FROM calibration_samples"
                " WHERE gallery_id = %s",
                (gallery_pk,),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def list_calibration_samples(
        self, gallery: str, after_id: int, limit: int
    ) -> list[CalibrationSampleRecord]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT id, source, content_sha256, image IS NOT NULL, created"
                " FROM calibration_samples WHERE gallery_id = %s AND id > %s"
                " ORDER BY id LIMIT %s",
                (gallery_pk, after_id, limit),
            ).fetchall()
        return [
            CalibrationSampleRecord(int(row[0]), row[1], row[2], bool(row[3]), iso(row[4]))
            for row in rows
        ]

    def load_calibration(self, gallery: str, model_id: str) -> CalibrationEmbeddings:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = (
                connection.cursor(binary=True)
                .execute(
                    "SELECT c.id, e.dim, e.vector FROM calibration_samples c"
                    " JOIN calibration_embeddings e ON e.sample_id = c.id AND e.model_id = %s"
                    " WHERE c.gallery_id = %s ORDER BY c.id",
                    (model_id, gallery_pk),
                )
                .fetchall()
            )
        count = len(rows)
        dim = int(rows[0][1]) if rows else 0
        sample_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=count)
        vectors = (
            np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4")
            .astype(np.float32)
            .reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return CalibrationEmbeddings(sample_ids, vectors)

    def clear_calibration(self, gallery: str) -> int:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            cursor = connection.execute(
                "DELETE FROM calibration_samples WHERE gallery_id = %s", (gallery_pk,)
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
                "SELECT c.id, c.image FROM calibration_samples c WHERE c.gallery_id = %s"
                " AND c.id > %s AND NOT EXISTS (SELECT 1 FROM calibration_embeddings e"
                " WHERE e.sample_id = c.id AND e.model_id = %s) ORDER BY c.id LIMIT %s",
                (gallery_pk, after_id, model_id, limit),
            ).fetchall()
        return [StoredImage(int(row[0]), None if row[1] is None else bytes(row[1])) for row in rows]

    def put_calibration_embeddings(
        self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray
    ) -> None:
        ids = [int(sample_id) for sample_id in sample_ids]
        rows = [np.asarray(vector) for vector in vectors]
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} sample ids for {len(rows)} vectors")
        with self._write() as connection:
            # A probe deleted meanwhile gets no embedding (the join finds no row).
            connection.execute(
                "INSERT INTO calibration_embeddings (sample_id, model_id, dim, vector)"
                " SELECT c.id, %s, v.dim, v.vector"
                " FROM unnest(%s::bigint[], %s::int[], %s::bytea[]) AS v(id, dim, vector)"
                " JOIN calibration_samples c ON c.id = v.id"
                " ON CONFLICT (sample_id, model_id)"
                " DO UPDATE SET dim = excluded.dim, vector = excluded.vector",
                (model_id, ids, [int(r.shape[0]) for r in rows], [vector_bytes(r) for r in rows]),
            )

"""Gallery export and import in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Json

from service.storage.errors import AlreadyExistsError, NotFoundError
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.samples import vector_bytes
from service.storage.protocols.changes import GALLERY_CREATED
from service.storage.records import ExportedProbe, ExportedSample, GalleryRecord, NewSample


def _vector(dim: int, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4", count=int(dim)).astype(np.float32)


class PostgresTransfer(PostgresConnection):
    def export_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedSample]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = (
                connection.cursor(binary=True)
                .execute(
                    "SELECT s.id, sub.subject_id, s.source, s.content_sha256, e.dim, e.vector,"
                    " s.image FROM samples s"
                    " JOIN subjects sub ON sub.id = s.subject_pk"
                    " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = %s"
                    " WHERE s.gallery_id = %s AND s.id > %s ORDER BY s.id LIMIT %s",
                    (model_id, gallery_pk, after_id, limit),
                )
                .fetchall()
            )
        return [
            ExportedSample(
                sample_id=int(row[0]),
                subject_id=row[1],
                source=row[2],
                content_sha256=row[3],
                embedding=_vector(row[4], row[5]),
                image=None if row[6] is None else bytes(row[6]),
            )
            for row in rows
        ]

    def export_calibration_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedProbe]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = (
                connection.cursor(binary=True)
                .execute(
                    "SELECT c.id, c.source, c.content_sha256, e.dim, e.vector, c.image"
                    " FROM calibration_samples c"
                    " JOIN calibration_embeddings e ON e.sample_id = c.id AND e.model_id = %s"
                    " WHERE c.gallery_id = %s AND c.id > %s ORDER BY c.id LIMIT %s",
                    (model_id, gallery_pk, after_id, limit),
                )
                .fetchall()
            )
        return [
            ExportedProbe(
                sample_id=int(row[0]),
                source=row[1],
                content_sha256=row[2],
                embedding=_vector(row[3], row[4]),
                image=None if row[5] is None else bytes(row[5]),
            )
            for row in rows
        ]

    def import_gallery(
        self,
        name: str,
        model_id: str,
        fpir: float,
        scoring: str,
        keep_images: bool,
        subjects: Sequence[tuple[str, Mapping[str, Any]]],
        samples: Sequence[tuple[str, NewSample]],
        calibration: Sequence[NewSample] = (),
    ) -> GalleryRecord:
        with self._write() as connection:
            try:
                with connection.transaction():  # a savepoint: the name check alone
                    row = connection.execute(
                        "INSERT INTO galleries (name, model_id, fpir, scoring, keep_images)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        (name, model_id, fpir, scoring, keep_images),
                    ).fetchone()
            except psycopg.errors.UniqueViolation as error:
                raise AlreadyExistsError(f"gallery {name!r} already exists") from error
            assert row is not None
            gallery_pk = int(row[0])
            subject_pks: dict[str, int] = {}
            for subject_id, metadata in subjects:
                inserted = connection.execute(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata)"
                    " VALUES (%s, %s, %s) RETURNING id",
                    (gallery_pk, subject_id, Json(dict(metadata))),
                ).fetchone()
                assert inserted is not None
                subject_pks[subject_id] = int(inserted[0])
            for subject_id, sample in samples:
                if subject_id not in subject_pks:
                    raise NotFoundError("subject", subject_id)
                inserted = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (
                        subject_pks[subject_id],
                        gallery_pk,
                        model_id,
                        sample.source,
                        sample.content_sha256,
                        sample.image if keep_images else None,
                    ),
                ).fetchone()
                assert inserted is not None
                vector = np.asarray(sample.embedding)
                connection.execute(
                    "INSERT INTO embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (%s, %s, %s, %s)",
                    (int(inserted[0]), model_id, int(vector.shape[0]), vector_bytes(vector)),
                )
            for probe in calibration:
                try:
                    with connection.transaction():
                        inserted = connection.execute(
                            "INSERT INTO calibration_samples (gallery_id, source,"
                            " content_sha256, image) VALUES (%s, %s, %s, %s) RETURNING id",
                            (
                                gallery_pk,
                                probe.source,
                                probe.content_sha256,
                                probe.image if keep_images else None,
                            ),
                        ).fetchone()
                except psycopg.errors.UniqueViolation as error:
                    raise AlreadyExistsError(
                        f"calibration probe {probe.content_sha256} appears twice"
                    ) from error
                assert inserted is not None
                vector = np.asarray(probe.embedding)
                connection.execute(
                    "INSERT INTO calibration_embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (%s, %s, %s, %s)",
                    (int(inserted[0]), model_id, int(vector.shape[0]), vector_bytes(vector)),
                )
            self._bump(connection, gallery_pk)
            self._log_change(connection, GALLERY_CREATED, name)
        record = self.get_gallery(name)
        assert record is not None
        return record

"""Gallery export and import in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.storage.errors import AlreadyExistsError, NotFoundError
from service.storage.protocols.changes import GALLERY_CREATED
from service.storage.records import ExportedProbe, ExportedSample, GalleryRecord, NewSample
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteTransfer(SQLiteConnection):
    def export_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedSample]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT s.id, sub.subject_id, s.source, s.content_sha256, e.dim, e.vector,"
                " s.image FROM samples s"
                " JOIN subjects sub ON sub.id = s.subject_pk"
                " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = ?"
                " WHERE s.gallery_id = ? AND s.id > ? ORDER BY s.id LIMIT ?",
                (model_id, gallery_pk, after_id, limit),
            ).fetchall()
        return [
            ExportedSample(
                sample_id=int(row[0]),
                subject_id=row[1],
                source=row[2],
                content_sha256=row[3],
                embedding=np.frombuffer(row[5], dtype=np.float32, count=int(row[4])).copy(),
                image=None if row[6] is None else bytes(row[6]),
            )
            for row in rows
        ]

    def export_calibration_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedProbe]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT c.id, c.source, c.content_sha256, e.dim, e.vector, c.image"
                " FROM calibration_samples c"
                " JOIN calibration_embeddings e ON e.sample_id = c.id AND e.model_id = ?"
                " WHERE c.gallery_id = ? AND c.id > ? ORDER BY c.id LIMIT ?",
                (model_id, gallery_pk, after_id, limit),
            ).fetchall()
        return [
            ExportedProbe(
                sample_id=int(row[0]),
                source=row[1],
                content_sha256=row[2],
                embedding=np.frombuffer(row[4], dtype=np.float32, count=int(row[3])).copy(),
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
            now = _now()
            try:
                cursor = connection.execute(
                    "INSERT INTO galleries (name, model_id, fpir, scoring, keep_images, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, model_id, fpir, scoring, int(keep_images), now),
                )
            except sqlite3.IntegrityError as error:
                raise AlreadyExistsError(f"gallery {name!r} already exists") from error
            gallery_pk = int(cursor.lastrowid or 0)
            subject_pks: dict[str, int] = {}
            for subject_id, metadata in subjects:
                cursor = connection.execute(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata, created, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (gallery_pk, subject_id, json.dumps(dict(metadata)), now, now),
                )
                subject_pks[subject_id] = int(cursor.lastrowid or 0)
            for subject_id, sample in samples:
                if subject_id not in subject_pks:
                    raise NotFoundError("subject", subject_id)
                cursor = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        subject_pks[subject_id],
                        gallery_pk,
                        model_id,
                        sample.source,
                        sample.content_sha256,
                        sample.image if keep_images else None,
                        now,
                    ),
                )
                vector = np.ascontiguousarray(sample.embedding, dtype=np.float32)
                connection.execute(
                    "INSERT INTO embeddings (sample_id, model_id, dim, vector) VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, model_id, int(vector.shape[0]), vector.tobytes()),
                )
            for probe in calibration:
                try:
                    cursor = connection.execute(
                        "INSERT INTO calibration_samples (gallery_id, source, content_sha256,"
                        " image, created) VALUES (?, ?, ?, ?, ?)",
                        (
                            gallery_pk,
                            probe.source,
                            probe.content_sha256,
                            probe.image if keep_images else None,
                            now,
                        ),
                    )
                except sqlite3.IntegrityError as error:
                    raise AlreadyExistsError(
                        f"calibration probe {probe.content_sha256} appears twice"
                    ) from error
                vector = np.ascontiguousarray(probe.embedding, dtype=np.float32)
                connection.execute(
                    "INSERT INTO calibration_embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (?, ?, ?, ?)",
                    (cursor.lastrowid, model_id, int(vector.shape[0]), vector.tobytes()),
                )
            self._bump(connection, gallery_pk)
            self._log_change(connection, GALLERY_CREATED, name)
        record = self.get_gallery(name)
        assert record is not None
        return record

"""Model migrations in SQLite: shadow embeddings of a second model and the atomic switch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.errors import LeaseNotHeld, StoreConflict
from service.storage.protocols.changes import MODEL_SWITCHED
from service.storage.records import StoredImage
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteMigrations(SQLiteConnection):
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
            connection.execute(
                "DELETE FROM calibration_embeddings WHERE model_id = ? AND sample_id IN"
                " (SELECT id FROM calibration_samples WHERE gallery_id = ?)",
                (model_id, gallery_pk),
            )

    def switch_gallery_model(
        self,
        gallery: str,
        source_model: str,
        target_model: str,
        job_id: str | None,
        *,
        lease: tuple[str, str] | None = None,
    ) -> int:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            if lease is not None:
                held = connection.execute(
                    "SELECT owner FROM job_leases WHERE job_id = ?", (lease[0],)
                ).fetchone()
                if held is None or held[0] != lease[1]:
                    raise LeaseNotHeld(f"job {lease[0]} is no longer run by this process")
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
            missing = connection.execute(
                "SELECT COUNT(*) FROM calibration_samples c WHERE c.gallery_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM calibration_embeddings e"
                " WHERE e.sample_id = c.id AND e.model_id = ?)",
                (gallery_pk, target_model),
            ).fetchone()[0]
            if missing:
                raise StoreConflict(
                    f"{missing} calibration samples have no {target_model} embedding yet"
                )
            connection.execute(
                "DELETE FROM embeddings WHERE model_id != ? AND sample_id IN"
                " (SELECT id FROM samples WHERE gallery_id = ?)",
                (target_model, gallery_pk),
            )
            connection.execute(
                "DELETE FROM calibration_embeddings WHERE model_id != ? AND sample_id IN"
                " (SELECT id FROM calibration_samples WHERE gallery_id = ?)",
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
            version = self._bump(connection, gallery_pk)
            self._log_change(connection, MODEL_SWITCHED, gallery, model_id=target_model)
            return version

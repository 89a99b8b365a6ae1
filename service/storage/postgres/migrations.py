"""Model migrations in PostgreSQL: shadow embeddings of a second model and the atomic switch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.errors import LeaseNotHeld, StoreConflict
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.samples import vector_bytes
from service.storage.protocols.changes import MODEL_SWITCHED
from service.storage.records import StoredImage


class PostgresMigrations(PostgresConnection):
    def count_samples_without_image(self, gallery: str) -> tuple[int, int]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            row = connection.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE image IS NULL) FROM samples"
                " WHERE gallery_id = %s",
                (gallery_pk,),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def count_samples_missing_embedding(self, gallery: str, model_id: str) -> int:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            row = connection.execute(
                "SELECT COUNT(*) FROM samples s WHERE s.gallery_id = %s AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.sample_id = s.id AND e.model_id = %s)",
                (gallery_pk, model_id),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def images_missing_embedding(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[StoredImage]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT s.id, s.image FROM samples s WHERE s.gallery_id = %s AND s.id > %s"
                " AND NOT EXISTS (SELECT 1 FROM embeddings e"
                " WHERE e.sample_id = s.id AND e.model_id = %s) ORDER BY s.id LIMIT %s",
                (gallery_pk, after_id, model_id, limit),
            ).fetchall()
        return [StoredImage(int(row[0]), None if row[1] is None else bytes(row[1])) for row in rows]

    def put_embeddings(self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray) -> None:
        ids = [int(sample_id) for sample_id in sample_ids]
        rows = [np.asarray(vector) for vector in vectors]
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} sample ids for {len(rows)} vectors")
        with self._write() as connection:
            # A sample deleted meanwhile gets no embedding (the join finds no row).
            connection.execute(
                "INSERT INTO embeddings (sample_id, model_id, dim, vector)"
                " SELECT s.id, %s, v.dim, v.vector"
                " FROM unnest(%s::bigint[], %s::int[], %s::bytea[]) AS v(id, dim, vector)"
                " JOIN samples s ON s.id = v.id"
                " ON CONFLICT (sample_id, model_id)"
                " DO UPDATE SET dim = excluded.dim, vector = excluded.vector",
                (
                    model_id,
                    ids,
                    [int(row.shape[0]) for row in rows],
                    [vector_bytes(row) for row in rows],
                ),
            )

    def drop_embeddings(self, gallery: str, model_id: str) -> None:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            connection.execute(
                "DELETE FROM embeddings WHERE model_id = %s AND sample_id IN"
                " (SELECT id FROM samples WHERE gallery_id = %s)",
                (model_id, gallery_pk),
            )
            connection.execute(
                "DELETE FROM calibration_embeddings WHERE model_id = %s AND sample_id IN"
                " (SELECT id FROM calibration_samples WHERE gallery_id = %s)",
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
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            if lease is not None:
                held = connection.execute(
                    "SELECT owner FROM job_leases WHERE job_id = %s FOR UPDATE", (lease[0],)
                ).fetchone()
                if held is None or held[0] != lease[1]:
                    raise LeaseNotHeld(f"job {lease[0]} is no longer run by this process")
            row = connection.execute(
                "SELECT model_id FROM galleries WHERE id = %s", (gallery_pk,)
            ).fetchone()
            assert row is not None
            if row[0] != source_model:
                raise StoreConflict(f"gallery {gallery!r} is on {row[0]}, not {source_model}")
            missing_row = connection.execute(
                "SELECT COUNT(*) FROM samples s WHERE s.gallery_id = %s AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.sample_id = s.id AND e.model_id = %s)",
                (gallery_pk, target_model),
            ).fetchone()
            missing = int(missing_row[0]) if missing_row else 0
            if missing:
                raise StoreConflict(f"{missing} samples have no {target_model} embedding yet")
            probes_row = connection.execute(
                "SELECT COUNT(*) FROM calibration_samples c WHERE c.gallery_id = %s"
                " AND NOT EXISTS (SELECT 1 FROM calibration_embeddings e"
                " WHERE e.sample_id = c.id AND e.model_id = %s)",
                (gallery_pk, target_model),
            ).fetchone()
            probes_missing = int(probes_row[0]) if probes_row else 0
            if probes_missing:
                raise StoreConflict(
                    f"{probes_missing} calibration samples have no {target_model} embedding yet"
                )
            connection.execute(
                "DELETE FROM calibration_embeddings WHERE model_id != %s AND sample_id IN"
                " (SELECT id FROM calibration_samples WHERE gallery_id = %s)",
                (target_model, gallery_pk),
            )
            connection.execute(
                "DELETE FROM embeddings WHERE model_id != %s AND sample_id IN"
                " (SELECT id FROM samples WHERE gallery_id = %s)",
                (target_model, gallery_pk),
            )
            connection.execute(
                "UPDATE samples SET model_id = %s WHERE gallery_id = %s",
                (target_model, gallery_pk),
            )
            connection.execute(
                "UPDATE galleries SET model_id = %s WHERE id = %s", (target_model, gallery_pk)
            )
            if job_id is not None:
                connection.execute(
                    "UPDATE jobs SET status = 'succeeded', done = total, updated = now()"
                    " WHERE id = %s",
                    (job_id,),
                )
            version = self._bump(connection, gallery_pk)
            self._log_change(connection, MODEL_SWITCHED, gallery, model_id=target_model)
            return version

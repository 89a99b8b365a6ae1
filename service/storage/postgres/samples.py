"""Samples and their embeddings in PostgreSQL: enrolment and loading a gallery's vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.storage.errors import NotFoundError
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.schema import iso
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

BULK_CHUNK = 5000  # rows per INSERT ... SELECT FROM unnest(...) in bulk_enrol


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class PostgresSamples(PostgresConnection):
    def add_samples(
        self, gallery: str, subject_id: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[SubjectRecord, list[AddedSample], int]:
        with self._write() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery, lock=True)
            self._check_model(connection, gallery_pk, gallery, model_id)
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            added: list[AddedSample] = []
            for sample in samples:
                existing = connection.execute(
                    "SELECT id FROM samples WHERE subject_pk = %s AND content_sha256 = %s",
                    (pk, sample.content_sha256),
                ).fetchone()
                if existing is not None:
                    added.append(AddedSample(int(existing[0]), created=False))
                    continue
                row = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                    (pk, gallery_pk, model_id, sample.source, sample.content_sha256, sample.image),
                ).fetchone()
                assert row is not None
                vector = np.asarray(sample.embedding)
                connection.execute(
                    "INSERT INTO embeddings (sample_id, model_id, dim, vector)"
                    " VALUES (%s, %s, %s, %s)",
                    (int(row[0]), model_id, int(vector.shape[0]), vector_bytes(vector)),
                )
                added.append(AddedSample(int(row[0]), created=True))
            record = self._subject_record(connection, pk)
            fresh = [item.sample_id for item in added if item.created]
            if fresh:
                version = self._bump(connection, gallery_pk)
                self._log_change(connection, SAMPLES_ADDED, gallery, sample_ids=fresh)
            return record, added, version

    def bulk_enrol(
        self,
        gallery: str,
        model_id: str,
        items: Sequence[tuple[str, NewSample]],
        *,
        create_subjects: bool = True,
    ) -> BulkEnrolled:
        with self._write() as connection:
            gallery_pk, version = self._gallery_row(connection, gallery, lock=True)
            self._check_model(connection, gallery_pk, gallery, model_id)
            subject_ids = list(dict.fromkeys(subject_id for subject_id, _ in items))
            if create_subjects:
                connection.execute(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata)"
                    " SELECT %s, unnest(%s::text[]), '{}'"
                    " ON CONFLICT (gallery_id, subject_id) DO NOTHING",
                    (gallery_pk, subject_ids),
                )
            subject_pks: dict[str, int] = dict(
                connection.execute(
                    "SELECT subject_id, id FROM subjects"
                    " WHERE gallery_id = %s AND subject_id = ANY(%s::text[])",
                    (gallery_pk, subject_ids),
                ).fetchall()
            )
            # The first of equal (subject, content) items is the one added, as one INSERT each
            # would add it; the others report that sample with created=False.
            first: dict[tuple[int, str], NewSample] = {}
            for subject_id, item in items:
                pk = subject_pks.get(subject_id)
                if pk is not None:
                    first.setdefault((pk, item.content_sha256), item)
            chosen = list(first.items())
            ids: dict[tuple[int, str], int] = {}
            new_keys: set[tuple[int, str]] = set()
            for start in range(0, len(chosen), BULK_CHUNK):
                chunk = chosen[start : start + BULK_CHUNK]
                inserted = connection.execute(
                    "INSERT INTO samples (subject_pk, gallery_id, model_id, source,"
                    " content_sha256, image)"
                    " SELECT v.subject_pk, %s, %s, v.source, v.sha, v.image FROM unnest("
                    "%s::bigint[], %s::text[], %s::text[], %s::bytea[])"
                    " WITH ORDINALITY AS v(subject_pk, source, sha, image, position)"
                    " ORDER BY v.position"
                    " ON CONFLICT (subject_pk, content_sha256) DO NOTHING"
                    " RETURNING id, subject_pk, content_sha256",
                    (
                        gallery_pk,
                        model_id,
                        [pk for (pk, _), _ in chunk],
                        [item.source for _, item in chunk],
                        [sha for (_, sha), _ in chunk],
                        [item.image for _, item in chunk],
                    ),
                ).fetchall()
                fresh = {(int(row[1]), row[2]): int(row[0]) for row in inserted}
                ids.update(fresh)
                new_keys.update(fresh)
                connection.execute(
                    "INSERT INTO embeddings (sample_id, model_id, dim, vector)"
                    " SELECT v.id, %s, v.dim, v.vector"
                    " FROM unnest(%s::bigint[], %s::int[], %s::bytea[]) AS v(id, dim, vector)",
                    (
                        model_id,
                        list(fresh.values()),
                        [int(np.asarray(first[key].embedding).shape[0]) for key in fresh],
                        [vector_bytes(first[key].embedding) for key in fresh],
                    ),
                )
                known = [key for key, _ in chunk if key not in fresh]
                if known:
                    ids.update(
                        ((int(row[1]), row[2]), int(row[0]))
                        for row in connection.execute(
                            "SELECT s.id, s.subject_pk, s.content_sha256 FROM samples s"
                            " JOIN unnest(%s::bigint[], %s::text[]) AS k(pk, sha)"
                            " ON s.subject_pk = k.pk AND s.content_sha256 = k.sha",
                            ([pk for pk, _ in known], [sha for _, sha in known]),
                        ).fetchall()
                    )
            added: list[BulkAdded] = []
            for subject_id, item in items:
                pk = subject_pks.get(subject_id)
                if pk is None:
                    added.append(BulkAdded(None, None, created=False))
                    continue
                key = (pk, item.content_sha256)
                created = key in new_keys
                new_keys.discard(key)  # a repeat of the key later in the call: not created
                added.append(BulkAdded(pk, ids[key], created=created))
            fresh = [int(item.sample_id) for item in added if item.created and item.sample_id]
            if fresh:
                version = self._bump(connection, gallery_pk)
                self._log_change(connection, SAMPLES_ADDED, gallery, sample_ids=fresh)
            return BulkEnrolled(added, int(version))

    def get_sample_image(self, gallery: str, subject_id: str, sample_id: int) -> bytes | None:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            row = connection.execute(
                "SELECT image FROM samples WHERE id = %s AND subject_pk = %s", (sample_id, pk)
            ).fetchone()
        if row is None:
            raise NotFoundError("sample", sample_id)
        return None if row[0] is None else bytes(row[0])

    def list_samples(self, gallery: str, subject_id: str) -> list[SampleRecord]:
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            rows = connection.execute(
                "SELECT id, model_id, source, content_sha256, image IS NOT NULL, created"
                " FROM samples WHERE subject_pk = %s ORDER BY id",
                (pk,),
            ).fetchall()
        return [
            SampleRecord(
                sample_id=int(row[0]),
                subject_id=subject_id,
                model_id=row[1],
                source=row[2],
                content_sha256=row[3],
                has_image=bool(row[4]),
                created=iso(row[5]),
            )
            for row in rows
        ]

    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> tuple[int, int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            cursor = connection.execute(
                "DELETE FROM samples WHERE id = %s AND subject_pk = %s", (sample_id, pk)
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
                    "SELECT id, subject_id FROM subjects WHERE gallery_id = %s", (gallery_pk,)
                )
            }
            # Binary results: the vectors arrive as raw bytes, not hex text.
            rows = (
                connection.cursor(binary=True)
                .execute(
                    "SELECT s.id, s.subject_pk, e.dim, e.vector FROM samples s"
                    " JOIN embeddings e ON e.sample_id = s.id AND e.model_id = %s"
                    " WHERE s.gallery_id = %s ORDER BY s.id",
                    (model_id, gallery_pk),
                )
                .fetchall()
            )
        count = len(rows)
        dim = int(rows[0][2]) if rows else 0
        sample_ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=count)
        subject_pks = np.fromiter((row[1] for row in rows), dtype=np.int64, count=count)
        vectors = (
            np.frombuffer(b"".join(row[3] for row in rows), dtype="<f4")
            .astype(np.float32)
            .reshape(count, dim)
            if rows
            else np.zeros((0, 0), dtype=np.float32)
        )
        return GalleryEmbeddings(int(version), sample_ids, subject_pks, vectors, subjects)

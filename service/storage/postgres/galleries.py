"""Galleries and subjects in PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Json

from service.storage.errors import AlreadyExistsError, NotFoundError
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.schema import iso
from service.storage.protocols.changes import (
    GALLERY_CREATED,
    GALLERY_DELETED,
    SUBJECT_DELETED,
    SUBJECT_PUT,
)
from service.storage.records import GalleryRecord, SubjectRecord


class PostgresGalleries(PostgresConnection):
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
            fpir=float(row[2]),
            scoring=row[3],
            keep_images=bool(row[4]),
            version=int(row[5]),
            created=iso(row[6]),
            subject_count=int(row[7]),
            sample_count=int(row[8]),
        )

    def create_gallery(
        self, name: str, model_id: str, fpir: float, scoring: str, keep_images: bool
    ) -> GalleryRecord:
        try:
            with self._write() as connection:
                connection.execute(
                    "INSERT INTO galleries (name, model_id, fpir, scoring, keep_images)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (name, model_id, fpir, scoring, keep_images),
                )
                self._log_change(connection, GALLERY_CREATED, name)
        except psycopg.errors.UniqueViolation as error:
            raise AlreadyExistsError(f"gallery {name!r} already exists") from error
        record = self.get_gallery(name)
        assert record is not None
        return record

    def get_gallery(self, name: str) -> GalleryRecord | None:
        row = self._fetchone(
            f"SELECT {self._GALLERY_COLUMNS} FROM galleries g WHERE g.name = %s", (name,)
        )
        return None if row is None else self._gallery_record(row)

    def list_galleries(self) -> list[GalleryRecord]:
        rows = self._fetchall(f"SELECT {self._GALLERY_COLUMNS} FROM galleries g ORDER BY g.name")
        return [self._gallery_record(row) for row in rows]

    def delete_gallery(self, name: str) -> bool:
        with self._write() as connection:
            cursor = connection.execute("DELETE FROM galleries WHERE name = %s", (name,))
            if cursor.rowcount:
                self._log_change(connection, GALLERY_DELETED, name)
            return cursor.rowcount > 0

    def put_subject(
        self, gallery: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> tuple[SubjectRecord, bool, int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            row = connection.execute(
                "SELECT id FROM subjects WHERE gallery_id = %s AND subject_id = %s",
                (gallery_pk, subject_id),
            ).fetchone()
            if row is None:
                inserted = connection.execute(
                    "INSERT INTO subjects (gallery_id, subject_id, metadata)"
                    " VALUES (%s, %s, %s) RETURNING id",
                    (gallery_pk, subject_id, Json(metadata or {})),
                ).fetchone()
                assert inserted is not None
                pk, created = int(inserted[0]), True
            else:
                pk, created = int(row[0]), False
                if metadata is not None:
                    connection.execute(
                        "UPDATE subjects SET metadata = %s, updated = now() WHERE id = %s",
                        (Json(metadata), pk),
                    )
            version = self._bump(connection, gallery_pk)
            record = self._subject_record(connection, pk)
            self._log_change(connection, SUBJECT_PUT, gallery, subject_pk=pk, subject_id=subject_id)
            return record, created, version

    def get_subject(self, gallery: str, subject_id: str) -> SubjectRecord | None:
        with self._read() as connection:
            try:
                gallery_pk = self._gallery_row(connection, gallery)[0]
                pk = self._subject_pk(connection, gallery_pk, subject_id)
            except NotFoundError:
                return None
            return self._subject_record(connection, pk)

    def list_subjects(
        self, gallery: str, limit: int, after: str | None, prefix: str | None = None
    ) -> list[SubjectRecord]:
        # left() counts characters: the prefix is compared exactly (no LIKE wildcards).
        prefix = prefix or ""
        after = after if after is not None else ""
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                f"SELECT {self.SUBJECT_COLUMNS} FROM subjects s"
                " WHERE s.gallery_id = %s AND s.subject_id > %s AND s.subject_id >= %s"
                " AND left(s.subject_id, %s) = %s"
                " ORDER BY s.subject_id LIMIT %s",
                (gallery_pk, after, prefix, len(prefix), prefix, limit),
            ).fetchall()
        return [self._subject_from_row(row) for row in rows]

    def delete_subject(self, gallery: str, subject_id: str) -> tuple[int, list[int], int]:
        with self._write() as connection:
            gallery_pk = self._gallery_row(connection, gallery, lock=True)[0]
            pk = self._subject_pk(connection, gallery_pk, subject_id)
            sample_ids = [
                int(row[0])
                for row in connection.execute(
                    "SELECT id FROM samples WHERE subject_pk = %s ORDER BY id", (pk,)
                ).fetchall()
            ]
            connection.execute("DELETE FROM subjects WHERE id = %s", (pk,))
            version = self._bump(connection, gallery_pk)
            self._log_change(
                connection,
                SUBJECT_DELETED,
                gallery,
                subject_pk=pk,
                subject_id=subject_id,
                sample_ids=sample_ids,
            )
            return pk, sample_ids, version

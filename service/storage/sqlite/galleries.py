"""Galleries and subjects in SQLite."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service.storage.errors import AlreadyExistsError, NotFoundError
from service.storage.protocols.changes import (
    GALLERY_CREATED,
    GALLERY_DELETED,
    SUBJECT_DELETED,
    SUBJECT_PUT,
)
from service.storage.records import GalleryRecord, SubjectRecord
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteGalleries(SQLiteConnection):
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
            self._log_change(connection, GALLERY_CREATED, name)
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
            if cursor.rowcount:
                self._log_change(connection, GALLERY_DELETED, name)
            return cursor.rowcount > 0

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
            self._log_change(connection, SUBJECT_PUT, gallery, subject_pk=pk, subject_id=subject_id)
            return self._subject_record(connection, pk), created, version

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
        # Ids with the prefix sort at or after it, so `>=` lets the unique index skip the rest;
        # substr() counts characters, so the prefix is compared exactly (no LIKE wildcards).
        after = after if after is not None else ""
        prefix = prefix or ""
        with self._read() as connection:
            gallery_pk = self._gallery_row(connection, gallery)[0]
            rows = connection.execute(
                "SELECT s.id, s.subject_id, s.metadata, s.created, s.updated,"
                " (SELECT COUNT(*) FROM samples WHERE subject_pk = s.id)"
                " FROM subjects s WHERE s.gallery_id = ? AND s.subject_id > ?"
                " AND s.subject_id >= ? AND substr(s.subject_id, 1, ?) = ?"
                " ORDER BY s.subject_id LIMIT ?",
                (gallery_pk, after, prefix, len(prefix), prefix, limit),
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

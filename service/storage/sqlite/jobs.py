"""Persisted jobs in SQLite."""

from __future__ import annotations

import sqlite3
import time

from service.storage.errors import AlreadyExistsError, StoreConflict
from service.storage.records import JobRecord
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteJobs(SQLiteConnection):
    _JOB_COLUMNS = (
        "id, kind, gallery, source_model, target_model, status, done, total, error, attempts,"
        " created, updated"
    )

    def create_job(
        self,
        job_id: str,
        kind: str,
        gallery: str,
        source_model: str,
        target_model: str,
        *,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> JobRecord:
        with self._write() as connection:
            running = connection.execute(
                "SELECT id FROM jobs WHERE gallery = ? AND status = 'running'", (gallery,)
            ).fetchone()
            if running is not None:
                raise StoreConflict(f"job {running[0]} is already migrating gallery {gallery!r}")
            now = _now()
            try:
                connection.execute(
                    f"INSERT INTO jobs ({self._JOB_COLUMNS}) VALUES"
                    " (?, ?, ?, ?, ?, 'running', 0, 0, NULL, 1, ?, ?)",
                    (job_id, kind, gallery, source_model, target_model, now, now),
                )
            except sqlite3.IntegrityError as error:
                raise AlreadyExistsError(f"job {job_id!r} already exists") from error
            if owner is not None:
                connection.execute(
                    "INSERT OR REPLACE INTO job_leases (job_id, owner, expires) VALUES (?, ?, ?)",
                    (job_id, owner, time.time() + lease_seconds),
                )
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else JobRecord(*row)

    def list_jobs(self, status: str | None = None) -> list[JobRecord]:
        query = f"SELECT {self._JOB_COLUMNS} FROM jobs"
        parameters: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            parameters = (status,)
        rows = self._connection().execute(query + " ORDER BY created", parameters).fetchall()
        return [JobRecord(*row) for row in rows]

    def update_job(
        self,
        job_id: str,
        *,
        done: int | None = None,
        total: int | None = None,
        status: str | None = None,
        error: str | None = None,
        attempt: bool = False,
    ) -> None:
        with self._write() as connection:
            connection.execute(
                "UPDATE jobs SET done = COALESCE(?, done), total = COALESCE(?, total),"
                " status = COALESCE(?, status), error = COALESCE(?, error),"
                " attempts = attempts + ?, updated = ? WHERE id = ?",
                (done, total, status, error, int(attempt), _now(), job_id),
            )

    def claim_job(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        with self._write() as connection:
            running = connection.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
            ).fetchone()
            if running is None:
                return False
            now = time.time()
            held = connection.execute(
                "SELECT owner, expires FROM job_leases WHERE job_id = ?", (job_id,)
            ).fetchone()
            if held is not None and held[0] != owner and held[1] >= now:
                return False
            connection.execute(
                "INSERT OR REPLACE INTO job_leases (job_id, owner, expires) VALUES (?, ?, ?)",
                (job_id, owner, now + lease_seconds),
            )
            return True

    def lease_holder(self, job_id: str) -> str | None:
        row = (
            self._connection()
            .execute("SELECT owner FROM job_leases WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def release_job(self, job_id: str, owner: str) -> None:
        with self._write() as connection:
            connection.execute(
                "DELETE FROM job_leases WHERE job_id = ? AND owner = ?", (job_id, owner)
            )

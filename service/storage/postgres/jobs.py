"""Persisted jobs in PostgreSQL."""

from __future__ import annotations

import psycopg

from service.storage.errors import AlreadyExistsError, StoreConflict
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.schema import iso
from service.storage.records import JobRecord

# Serialises job creation: "one running job per gallery" is checked and kept in one step.
JOBS_LOCK = 0x6F67_5F6A_6F62_7321


class PostgresJobs(PostgresConnection):
    _JOB_COLUMNS = (
        "id, kind, gallery, source_model, target_model, status, done, total, error, attempts,"
        " created, updated"
    )

    @staticmethod
    def _job(row: tuple) -> JobRecord:
        return JobRecord(
            *row[:6], int(row[6]), int(row[7]), row[8], int(row[9]), iso(row[10]), iso(row[11])
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
        try:
            with self._write() as connection:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (JOBS_LOCK,))
                running = connection.execute(
                    "SELECT id FROM jobs WHERE gallery = %s AND status = 'running'", (gallery,)
                ).fetchone()
                if running is not None:
                    raise StoreConflict(
                        f"job {running[0]} is already migrating gallery {gallery!r}"
                    )
                row = connection.execute(
                    "INSERT INTO jobs (id, kind, gallery, source_model, target_model, status)"
                    f" VALUES (%s, %s, %s, %s, %s, 'running') RETURNING {self._JOB_COLUMNS}",
                    (job_id, kind, gallery, source_model, target_model),
                ).fetchone()
                if owner is not None:
                    connection.execute(
                        "INSERT INTO job_leases (job_id, owner, expires)"
                        " VALUES (%s, %s, now() + make_interval(secs => %s))",
                        (job_id, owner, lease_seconds),
                    )
        except psycopg.errors.UniqueViolation as error:
            raise AlreadyExistsError(f"job {job_id!r} already exists") from error
        assert row is not None
        return self._job(row)

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._fetchone(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return None if row is None else self._job(row)

    def list_jobs(self, status: str | None = None) -> list[JobRecord]:
        if status is None:
            rows = self._fetchall(f"SELECT {self._JOB_COLUMNS} FROM jobs ORDER BY created, id")
        else:
            rows = self._fetchall(
                f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE status = %s ORDER BY created, id",
                (status,),
            )
        return [self._job(row) for row in rows]

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
                "UPDATE jobs SET done = COALESCE(%s, done), total = COALESCE(%s, total),"
                " status = COALESCE(%s, status), error = COALESCE(%s, error),"
                " attempts = attempts + %s, updated = now() WHERE id = %s",
                (done, total, status, error, int(attempt), job_id),
            )

    def claim_job(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        # The database's clock decides expiry: replicas on several machines agree on it.
        with self._write() as connection:
            row = connection.execute(
                "INSERT INTO job_leases (job_id, owner, expires)"
                " SELECT id, %s, now() + make_interval(secs => %s) FROM jobs"
                " WHERE id = %s AND status = 'running'"
                " ON CONFLICT (job_id) DO UPDATE SET owner = excluded.owner,"
                " expires = excluded.expires"
                " WHERE job_leases.owner = excluded.owner OR job_leases.expires < now()"
                " RETURNING owner",
                (owner, lease_seconds, job_id),
            ).fetchone()
        return row is not None

    def lease_holder(self, job_id: str) -> str | None:
        row = self._fetchone("SELECT owner FROM job_leases WHERE job_id = %s", (job_id,))
        return None if row is None else str(row[0])

    def release_job(self, job_id: str, owner: str) -> None:
        with self._write() as connection:
            connection.execute(
                "DELETE FROM job_leases WHERE job_id = %s AND owner = %s", (job_id, owner)
            )

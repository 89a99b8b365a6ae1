"""Persisted background jobs (gallery migrations): status running, succeeded or failed."""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.storage.records import JobRecord


class JobStore(ABC):
    @abstractmethod
    def create_job(
        self, job_id: str, kind: str, gallery: str, source_model: str, target_model: str
    ) -> JobRecord:
        """A running job (attempt 1); StoreConflict if a job is already running on the
        gallery, AlreadyExistsError if the id is taken (nothing changed either way)."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, status: str | None = None) -> list[JobRecord]:
        """All jobs, or those with one status, oldest first."""

    @abstractmethod
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
        """Set the fields given (None keeps a field); `attempt` counts one more attempt."""

"""Persisted background jobs (gallery migrations): status running, succeeded or failed.

With several replicas a running job is run by exactly one of them: the one holding its lease,
a row renewed while it runs; a lease not renewed in time (its holder died) may be claimed by
another replica, which then resumes the job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.storage.records import JobRecord


class JobStore(ABC):
    @abstractmethod
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
        """A running job (attempt 1); StoreConflict if a job is already running on the
        gallery, AlreadyExistsError if the id is taken (nothing changed either way). With an
        `owner`, the job's lease is `owner`'s for `lease_seconds`, in the same transaction."""

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

    @abstractmethod
    def claim_job(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Take or renew the lease of running job `job_id` for `owner`, for `lease_seconds`
        from now: True if `owner` holds it on return (it was free, expired, or `owner`'s
        already); False if another owner's lease has not expired or the job is not running."""

    @abstractmethod
    def lease_holder(self, job_id: str) -> str | None:
        """The owner holding (or last holding, if expired) the lease of `job_id`, if any."""

    @abstractmethod
    def release_job(self, job_id: str, owner: str) -> None:
        """Give up `owner`'s lease of `job_id` (nothing if `owner` does not hold it)."""

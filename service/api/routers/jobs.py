"""Background jobs: gallery migrations (started by POST /v1/galleries/{g}/migrate)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool

from service.api.deps import ClientKey, State
from service.api.schemas import JobOut, JobProgress
from service.storage import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_out(job: JobRecord) -> JobOut:
    return JobOut(
        job_id=job.job_id,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        gallery=job.gallery,
        from_model=job.source_model,
        to_model=job.target_model,
        progress=JobProgress(done=job.done, total=job.total),
        error=job.error,
        attempts=job.attempts,
        created=job.created,
        updated=job.updated,
    )


@router.get("/{job_id}", response_model=JobOut, summary="Status and progress of a job")
async def get_job(
    job_id: Annotated[str, Path(max_length=128)], state: State, _: ClientKey
) -> JobOut:
    return job_out(await run_in_threadpool(state.migrations.get, job_id))

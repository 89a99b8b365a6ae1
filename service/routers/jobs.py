"""Background jobs (gallery migrations come with issue 5). Until then no job exists."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.deps import ClientKey
from service.errors import not_found
from service.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut, summary="Status of a background job")
async def get_job(job_id: Annotated[str, Path(max_length=128)], _: ClientKey) -> JobOut:
    raise not_found("job", job_id)

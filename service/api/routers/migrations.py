"""Migrate a gallery to another registered model (admin): a background job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminKey, State
from service.api.schemas import MigrateRequest, MigrationAccepted
from service.core.ids import Identifier

router = APIRouter(prefix="/v1/galleries", tags=["galleries"])


@router.post(
    "/{gallery}/migrate",
    status_code=202,
    response_model=MigrationAccepted,
    summary="Re-embed the gallery's kept images with another model, then switch atomically",
    description="Identify keeps answering with the current model until the switch, then with "
    "the new one; each answer's `model` says which. Follow the job at GET /v1/jobs/{job_id}. "
    "409 if the gallery has samples without a kept image (enrolled as embeddings), is already "
    "on that model, or is already migrating.",
)
async def migrate_gallery(
    gallery: Annotated[Identifier, Path(description="gallery name")],
    body: MigrateRequest,
    state: State,
    _: AdminKey,
) -> MigrationAccepted:
    job = await run_in_threadpool(state.migrations.start, gallery, body.model)
    return MigrationAccepted(job_id=job.job_id)

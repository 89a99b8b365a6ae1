"""Gallery export and import (admin): one tar archive per gallery (service/core/transfer.py)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from service.api.deps import AdminKey, State
from service.api.routers.galleries import GalleryName, gallery_out
from service.api.schemas import GalleryOut
from service.core.errors import ServiceError
from service.core.ids import Identifier

router = APIRouter(prefix="/v1/galleries", tags=["galleries"])

ARCHIVE_MEDIA_TYPE = "application/x-tar"


@router.get(
    "/{gallery}/export",
    summary="Export a gallery as one tar archive",
    description="Settings, subjects with metadata, samples with their embeddings and model, "
    "kept images, and a manifest with the sha256 of every member. POST it to "
    "/v1/galleries/import to recreate the gallery here or on another service.",
    response_class=StreamingResponse,
    responses={200: {"content": {ARCHIVE_MEDIA_TYPE: {}}, "description": "the archive"}},
)
async def export_gallery(gallery: GalleryName, state: State, _: AdminKey) -> StreamingResponse:
    archive = await run_in_threadpool(state.transfer.export, gallery)
    filename = f"{gallery}.tar"
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return StreamingResponse(
        archive.chunks(),
        media_type=ARCHIVE_MEDIA_TYPE,
        headers={
            "Content-Length": str(archive.size),
            "Content-Disposition": (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
            ),
        },
        background=BackgroundTask(archive.close),
    )


@router.post(
    "/import",
    status_code=201,
    response_model=GalleryOut,
    summary="Recreate a gallery from an exported archive (multipart field `archive`)",
    description="The gallery answers as the original did (same candidates, scores, thresholds "
    "and decisions). `name` defaults to the archive's gallery name. A corrupt, truncated or "
    "altered archive is a 422 (`invalid_archive`), a model this service lacks a 422 "
    "(`unknown_model`), a name in use a 409; nothing is written then.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"archive": {"type": "string", "format": "binary"}},
                        "required": ["archive"],
                        "additionalProperties": False,
                    }
                }
            },
        }
    },
)
async def import_gallery(
    request: Request,
    state: State,
    _: AdminKey,
    name: Annotated[
        Identifier | None, Query(description="the new gallery's name (default: the archive's)")
    ] = None,
) -> GalleryOut:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ServiceError(
            "unsupported_media_type",
            f"content type {content_type or '(none)'!r}: send multipart/form-data with the "
            "archive in the field 'archive'",
        )
    form = await request.form(
        max_files=1, max_fields=4, max_part_size=state.settings.max_request_bytes
    )
    try:
        archive = form.get("archive")
        if not isinstance(archive, UploadFile):
            raise ServiceError("no_input", "send the archive as the multipart file 'archive'")
        record = await run_in_threadpool(state.transfer.import_archive, archive.file, name)
    finally:
        await form.close()
    return gallery_out(record)

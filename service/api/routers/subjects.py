"""Subjects of a gallery: create or update (PUT), get, list with a cursor, delete."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import ClientKey, GalleriesDep
from service.api.routers.galleries import GalleryName
from service.api.schemas import SampleInfo, SubjectDetail, SubjectOut, SubjectPage, SubjectPut
from service.core.errors import ServiceError
from service.core.ids import Identifier
from service.storage import SampleRecord, SubjectRecord

router = APIRouter(prefix="/v1/galleries/{gallery}/subjects", tags=["subjects"])

SubjectId = Annotated[Identifier, Path(description="subject id (any printable Unicode, no '/')")]


def subject_out(record: SubjectRecord) -> SubjectOut:
    return SubjectOut(
        subject_id=record.subject_id,
        metadata=record.metadata,
        sample_count=record.sample_count,
        created=record.created,
        updated=record.updated,
    )


def sample_info(record: SampleRecord) -> SampleInfo:
    return SampleInfo(
        sample_id=record.sample_id,
        model=record.model_id,
        source=record.source,  # type: ignore[arg-type]
        content_sha256=record.content_sha256,
        has_image=record.has_image,
        created=record.created,
    )


def encode_cursor(subject_id: str) -> str:
    return base64.urlsafe_b64encode(subject_id.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode(
            "utf-8"
        )
    except (binascii.Error, UnicodeError, ValueError):
        raise ServiceError("invalid_cursor", "cursor is not one this service issued") from None


@router.put(
    "/{subject_id}",
    response_model=SubjectOut,
    summary="Create a subject (201) or update its metadata (200)",
    responses={201: {"model": SubjectOut, "description": "created"}},
)
async def put_subject(
    gallery: GalleryName,
    subject_id: SubjectId,
    galleries: GalleriesDep,
    _: ClientKey,
    response: Response,
    body: SubjectPut | None = None,
) -> SubjectOut:
    metadata = body.metadata if body is not None else None
    written = await run_in_threadpool(galleries.put_subject, gallery, subject_id, metadata)
    response.status_code = 201 if written.created else 200
    return subject_out(written.record)


@router.get("", response_model=SubjectPage, summary="List subjects, ordered by id")
async def list_subjects(
    gallery: GalleryName,
    galleries: GalleriesDep,
    _: ClientKey,
    limit: Annotated[
        int,
        Query(
            ge=1,
            description="page size, at most OPENGALLERY_MAX_PAGE_SIZE",
            json_schema_extra={"maximum": 1000},
        ),
    ] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=2048,
            json_schema_extra={"pattern": "^[A-Za-z0-9_-]*$"},
            description="`next_cursor` of the previous page, as given (opaque, base64url); "
            "a cursor this service did not issue is 422 invalid_cursor",
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        Query(max_length=256, description="only subjects whose id starts with this (exact case)"),
    ] = None,
) -> SubjectPage:
    after = decode_cursor(cursor) if cursor else None
    page = await run_in_threadpool(galleries.list_subjects, gallery, limit, after, prefix)
    return SubjectPage(
        subjects=[subject_out(r) for r in page.subjects],
        next_cursor=encode_cursor(page.last) if page.last is not None else None,
    )


@router.get("/{subject_id}", response_model=SubjectDetail, summary="Get a subject and its samples")
async def get_subject(
    gallery: GalleryName, subject_id: SubjectId, galleries: GalleriesDep, _: ClientKey
) -> SubjectDetail:
    detail = await run_in_threadpool(galleries.get_subject, gallery, subject_id)
    return SubjectDetail(
        **subject_out(detail.record).model_dump(),
        samples=[sample_info(s) for s in detail.samples],
    )


@router.delete("/{subject_id}", status_code=204, summary="Delete a subject and its samples")
async def delete_subject(
    gallery: GalleryName, subject_id: SubjectId, galleries: GalleriesDep, _: ClientKey
) -> Response:
    await run_in_threadpool(galleries.delete_subject, gallery, subject_id)
    return Response(status_code=204)

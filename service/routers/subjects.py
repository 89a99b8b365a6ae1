"""Subjects of a gallery: create or update (PUT), get, list with a cursor, delete."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.deps import ClientKey, Engine, State
from service.errors import ApiError
from service.ids import Identifier
from service.routers.galleries import GalleryName
from service.schemas import SampleInfo, SubjectDetail, SubjectOut, SubjectPage, SubjectPut
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
        raise ApiError(422, "invalid_cursor", "cursor is not one this service issued") from None


@router.put(
    "/{subject_id}",
    response_model=SubjectOut,
    summary="Create a subject (201) or update its metadata (200)",
    responses={201: {"model": SubjectOut, "description": "created"}},
)
async def put_subject(
    gallery: GalleryName,
    subject_id: SubjectId,
    engine: Engine,
    state: State,
    _: ClientKey,
    response: Response,
    body: SubjectPut | None = None,
) -> SubjectOut:
    metadata = body.metadata if body is not None else None
    if metadata is not None:
        size = len(json.dumps(metadata).encode("utf-8"))
        if size > state.settings.max_metadata_bytes:
            raise ApiError(
                413,
                "metadata_too_large",
                f"metadata is {size} bytes of JSON; "
                f"the limit is {state.settings.max_metadata_bytes}",
            )
    record, created = await run_in_threadpool(engine.put_subject, gallery, subject_id, metadata)
    response.status_code = 201 if created else 200
    return subject_out(record)


@router.get("", response_model=SubjectPage, summary="List subjects, ordered by id")
async def list_subjects(
    gallery: GalleryName,
    engine: Engine,
    state: State,
    _: ClientKey,
    limit: Annotated[int, Query(ge=1, description="page size")] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> SubjectPage:
    if limit > state.settings.max_page_size:
        raise ApiError(
            422, "invalid_limit", f"limit must be 1-{state.settings.max_page_size}, got {limit}"
        )
    after = decode_cursor(cursor) if cursor else None
    records = await run_in_threadpool(engine.list_subjects, gallery, limit + 1, after)
    page = records[:limit]
    next_cursor = encode_cursor(page[-1].subject_id) if len(records) > limit else None
    return SubjectPage(subjects=[subject_out(r) for r in page], next_cursor=next_cursor)


@router.get("/{subject_id}", response_model=SubjectDetail, summary="Get a subject and its samples")
async def get_subject(
    gallery: GalleryName, subject_id: SubjectId, engine: Engine, _: ClientKey
) -> SubjectDetail:
    record, samples = await run_in_threadpool(engine.get_subject, gallery, subject_id)
    return SubjectDetail(
        **subject_out(record).model_dump(), samples=[sample_info(s) for s in samples]
    )


@router.delete("/{subject_id}", status_code=204, summary="Delete a subject and its samples")
async def delete_subject(
    gallery: GalleryName, subject_id: SubjectId, engine: Engine, _: ClientKey
) -> Response:
    await run_in_threadpool(engine.delete_subject, gallery, subject_id)
    return Response(status_code=204)

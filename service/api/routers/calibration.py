"""A gallery's own calibration set: add non-mated probes (admin), read it, delete it (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from service.api.deps import AdminKey, CalibrationSetsDep, ClientKey, State
from service.api.routers.galleries import GalleryName
from service.api.schemas import (
    CalibrationOut,
    CalibrationProbeOut,
    CalibrationSampleInfo,
    CalibrationSamplePage,
    CalibrationSamplesOut,
    CalibrationScoresOut,
    OperatingPointOut,
    SamplesJson,
)
from service.api.uploads import media_type, parse_json, read_form, request_body, uploads_from_json
from service.core.calibration_sets import CalibrationSummary
from service.core.errors import ServiceError

router = APIRouter(prefix="/v1/galleries/{gallery}/calibration", tags=["calibration"])


class _NoFields(BaseModel):
    model_config = ConfigDict(extra="forbid")


def calibration_out(summary: CalibrationSummary) -> dict:
    return CalibrationOut(
        source=summary.source,  # type: ignore[arg-type]
        size=summary.size,
        min_fpir=summary.min_fpir,
        fpir=summary.fpir,
        gallery_set_size=summary.gallery_set_size,
        needed=summary.needed,
        thresholds=[
            OperatingPointOut(fpir=p.fpir, threshold=p.threshold, fpir_upper=p.fpir_upper)
            for p in summary.thresholds
        ],
    ).model_dump()


@router.post(
    "/samples",
    status_code=201,
    response_model=CalibrationSamplesOut,
    summary="Add non-mated probes to the gallery's own calibration set (admin)",
    description=(
        "Probes of people who are NOT enrolled, from the deployment (multipart `images`, JSON "
        "base64 `images`, or JSON `embeddings`). Each is accepted or rejected with a reason; "
        "accepted ones are committed before the response; re-sent content is not added twice "
        "(`duplicate: true`). The set replaces the bundle's once it holds `needed` probes "
        "(10 / the gallery's FPIR); until then `source` stays `bundle`. When every probe is "
        "rejected the answer is a 422 that lists the reasons."
    ),
    openapi_extra=request_body(SamplesJson, "images", {}, many=True),
)
async def add_calibration_samples(
    request: Request,
    gallery: GalleryName,
    calibration_sets: CalibrationSetsDep,
    state: State,
    _: AdminKey,
) -> CalibrationSamplesOut:
    if media_type(request) == "application/json":
        body = await parse_json(request, SamplesJson)
        uploads = uploads_from_json(body.images, body.embeddings)
    else:
        _fields, uploads = await read_form(request, state.settings, "images", _NoFields)
    upload = await run_in_threadpool(calibration_sets.add, gallery, uploads)
    samples = [
        CalibrationProbeOut(
            status=o.status,  # type: ignore[arg-type]
            reason=o.reason,
            code=o.code,
            content_sha256=o.content_sha256,
            duplicate=o.duplicate,
        )
        for o in upload.outcomes
    ]
    if not any(o.status == "accepted" for o in upload.outcomes):
        reasons = "; ".join(f"sample {i}: {o.reason}" for i, o in enumerate(upload.outcomes))
        codes = {o.code for o in upload.outcomes}
        raise ServiceError(
            codes.pop() if len(codes) == 1 else "all_samples_rejected",
            f"no calibration sample accepted: {reasons}",
            details={"samples": [s.model_dump() for s in samples]},
        )
    return CalibrationSamplesOut(
        **calibration_out(upload.summary), model=upload.model_id, samples=samples
    )


# Sample ids are 64-bit integers: 18 digits always fit.
_CURSOR_DIGITS = 18


@router.get(
    "/samples",
    response_model=CalibrationSamplePage,
    summary="List the probes of the gallery's own calibration set, by id (admin)",
)
async def list_calibration_samples(
    gallery: GalleryName,
    calibration_sets: CalibrationSetsDep,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, description="page size")] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=_CURSOR_DIGITS,
            description="`next_cursor` of the previous page, as given (decimal digits)",
            json_schema_extra={"pattern": f"^[0-9]{{1,{_CURSOR_DIGITS}}}$"},
        ),
    ] = None,
) -> CalibrationSamplePage:
    after = 0
    if cursor is not None:
        # isdigit() alone admits '²' and other digits int() refuses.
        if not (cursor.isascii() and cursor.isdigit()):
            raise ServiceError("invalid_cursor", "cursor is not one this service issued")
        after = int(cursor)
    page = await run_in_threadpool(calibration_sets.list_samples, gallery, limit, after)
    return CalibrationSamplePage(
        samples=[
            CalibrationSampleInfo(
                sample_id=r.sample_id,
                source=r.source,  # type: ignore[arg-type]
                content_sha256=r.content_sha256,
                has_image=r.has_image,
                created=r.created,
            )
            for r in page.samples
        ],
        next_cursor=str(page.last) if page.last is not None else None,
    )


@router.get(
    "",
    response_model=CalibrationScoresOut,
    # `scores` is left out unless asked for (it holds one number per calibration probe).
    response_model_exclude_unset=True,
    summary="The gallery's calibration: its source, size and thresholds with fpir_upper",
)
async def get_calibration(
    gallery: GalleryName,
    calibration_sets: CalibrationSetsDep,
    _: ClientKey,
    scores: Annotated[
        bool,
        Query(description="add `scores`: every calibration probe's best score, descending"),
    ] = False,
) -> CalibrationScoresOut:
    summary = await run_in_threadpool(calibration_sets.describe, gallery, scores)
    if summary.scores is None:
        return CalibrationScoresOut(**calibration_out(summary))
    return CalibrationScoresOut(**calibration_out(summary), scores=summary.scores)


@router.delete(
    "",
    response_model=CalibrationOut,
    summary="Delete the gallery's own calibration set: back to the bundle's (admin)",
    description=(
        "Refused (409 `calibration_required`) when the bundle's set is too small for the "
        "gallery's default FPIR; the message names the number of searches needed."
    ),
)
async def delete_calibration(
    gallery: GalleryName, calibration_sets: CalibrationSetsDep, _: AdminKey
) -> CalibrationOut:
    summary = await run_in_threadpool(calibration_sets.clear, gallery)
    return CalibrationOut(**calibration_out(summary))

"""Identify (1:N, a batch of probes) and verify (1:1 against one subject)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import ClientKey, get_recognition
from service.api.routers.galleries import GalleryName
from service.api.schemas import IdentifyJson, IdentifyOut, VerifyJson, VerifyOut
from service.api.uploads import media_type, parse_json, read_form, request_body, uploads_from_json
from service.core.errors import invalid
from service.core.ids import ID_JSON_SCHEMA, Identifier
from service.core.ingest import Upload

router = APIRouter(prefix="/v1/galleries/{gallery}", tags=["recognition"])

_NUMBER = {"type": "number"}
_FPIR = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_TOP_K = {
    "type": "integer",
    "minimum": 1,
    "maximum": 100,
    "description": "at most OPENGALLERY_MAX_TOP_K",
}


class _IdentifyForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1)
    fpir: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    threshold: float | None = Field(None, allow_inf_nan=False)


class _VerifyForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject_id: Identifier
    fpir: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    threshold: float | None = Field(None, allow_inf_nan=False)


@router.post(
    "/identify",
    response_model=IdentifyOut,
    summary="Identify probes: 'subject X' or 'unknown' at the chosen FPIR",
    description=(
        "Probes as multipart files (`images`, repeatable), JSON base64 `images`, or JSON "
        "`embeddings`. Each result is `known` when the best subject's score reaches the "
        "threshold calibrated for `fpir` (default: the gallery's) against the current gallery, "
        "or the explicit `threshold`."
    ),
    openapi_extra=request_body(
        IdentifyJson,
        "images",
        {"top_k": _TOP_K, "fpir": _FPIR, "threshold": _NUMBER},
        many=True,
    ),
)
async def identify(
    request: Request,
    gallery: GalleryName,
    _: ClientKey,
) -> JSONResponse:
    # Looked up here, not as a dependency: every dependency costs FastAPI more per request than
    # this lookup (identify and verify are the hot paths; bench/request_path.py).
    recognition = await get_recognition(request)
    if media_type(request) == "application/json":
        body = await parse_json(request, IdentifyJson)
        uploads = uploads_from_json(body.images, body.embeddings)
        top_k, fpir, threshold = body.top_k, body.fpir, body.threshold
    else:
        form, uploads = await read_form(request, recognition.settings, "images", _IdentifyForm)
        top_k, fpir, threshold = form.top_k, form.fpir, form.threshold
    identification = await run_in_threadpool(
        recognition.identify, gallery, uploads, top_k, fpir, threshold
    )
    # Built as plain JSON, not as pydantic models validated again on the way out: on a batch
    # of 32 probes that validation cost more than the search (the schema stays IdentifyOut).
    return JSONResponse(
        {
            "model": identification.model_id,
            "gallery": gallery,
            "results": [
                {
                    "decision": r.decision,
                    "subject_id": r.subject_id,
                    "score": r.score,
                    "threshold": r.threshold,
                    "fpir": r.fpir,
                    "fpir_upper": r.fpir_upper,
                    "candidates": [
                        {"subject_id": c.subject_id, "score": c.score} for c in r.candidates
                    ],
                }
                for r in identification.results
            ],
        }
    )


def verify_probe(body: VerifyJson) -> list[Upload]:
    """The one probe of a verify: `image`/`embedding`, or a one-item `images`/`embeddings`."""
    given = {
        name: value
        for name, value in (
            ("image", body.image),
            ("embedding", body.embedding),
            ("images", body.images),
            ("embeddings", body.embeddings),
        )
        if value is not None
    }
    if len(given) != 1:
        names = ", ".join(given) or "none"
        raise invalid(f"give exactly one of image, embedding, images or embeddings (got {names})")
    if body.images is not None or body.embeddings is not None:
        count = len(body.images if body.images is not None else body.embeddings or [])
        if count != 1:
            raise invalid(f"verify takes exactly one probe, got {count}; use identify for several")
    images = [body.image] if body.image is not None else body.images
    embeddings = [body.embedding] if body.embedding is not None else body.embeddings
    return uploads_from_json(images, embeddings)


@router.post(
    "/verify",
    response_model=VerifyOut,
    summary="Verify a probe against one subject",
    description=(
        "JSON `{subject_id, image | embedding}` (or a one-item `images` | `embeddings` list, "
        "as in identify) or multipart (`subject_id` field, `image` "
        "file). `match` uses the same calibrated threshold as identify."
    ),
    openapi_extra=request_body(
        VerifyJson,
        "image",
        {"subject_id": ID_JSON_SCHEMA, "fpir": _FPIR, "threshold": _NUMBER},
        many=False,
    ),
)
async def verify(
    request: Request,
    gallery: GalleryName,
    _: ClientKey,
) -> VerifyOut:
    recognition = await get_recognition(request)  # not a dependency: see identify
    if media_type(request) == "application/json":
        body = await parse_json(request, VerifyJson)
        uploads = verify_probe(body)
        subject_id, fpir, threshold = body.subject_id, body.fpir, body.threshold
    else:
        form, uploads = await read_form(request, recognition.settings, "image", _VerifyForm)
        if len(uploads) != 1:
            raise invalid(f"send exactly one image, got {len(uploads)}")
        subject_id, fpir, threshold = form.subject_id, form.fpir, form.threshold
    verification = await run_in_threadpool(
        recognition.verify, gallery, subject_id, uploads[0], fpir, threshold
    )
    return VerifyOut(
        model=verification.model_id,
        subject_id=verification.subject_id,
        match=verification.match,
        score=verification.score,
        threshold=verification.threshold,
        fpir=verification.fpir,
        fpir_upper=verification.fpir_upper,
    )

"""Request and response bodies of the HTTP API (separate from the storage records)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from service.core.ids import ID_JSON_SCHEMA, Identifier

Scoring = Literal["max", "mean"]
Fpir = float


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors --
class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. not_found, invalid_image")
    message: str = Field(description="what went wrong, for people")
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- galleries --
class GalleryCreate(Strict):
    name: Identifier
    model: str | None = Field(None, description="model id name@version; the default model if unset")
    fpir: float | None = Field(
        None, gt=0.0, le=1.0, allow_inf_nan=False, description="default FPIR of identify"
    )
    scoring: Scoring = Field("max", description="subject score: max over samples or mean template")
    keep_images: bool | None = Field(
        None, description="keep enrolled image bytes (needed to migrate to a new model)"
    )


class GalleryCalibrationOut(BaseModel):
    source: Literal["gallery", "bundle"] = Field(
        description="whose strangers the thresholds come from: the gallery's own calibration "
        "set or the model bundle's"
    )
    size: int = Field(description="non-mated calibration searches in that set")
    min_fpir: float = Field(description="the smallest FPIR the set supports (10 / size)")
    fpir: float = Field(description="the gallery's default FPIR")
    threshold: float | None = Field(description="its threshold now; null for an empty gallery")
    fpir_upper: float | None = Field(
        description="95% upper confidence bound on the FPIR that threshold realises"
    )
    gallery_set_size: int = Field(description="probes in the gallery's own set")
    needed: int = Field(
        description="searches the gallery's FPIR needs; its own set takes effect from this size"
    )


class GalleryOut(BaseModel):
    name: str
    model: str
    fpir: float
    scoring: Scoring
    keep_images: bool
    subject_count: int
    sample_count: int
    version: int
    created: str
    calibration: GalleryCalibrationOut | None = Field(
        None, description="the calibration answering now (in a gallery's details only)"
    )


class GalleryList(BaseModel):
    galleries: list[GalleryOut]


# -- subjects --
MAX_METADATA_DEPTH = 32


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Bounded nesting (deeper JSON cannot be serialised back) and finite numbers only."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"is nested more than {MAX_METADATA_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("must not contain NaN or infinite numbers")
    return value


class SubjectPut(Strict):
    metadata: Annotated[dict[str, Any], AfterValidator(check_metadata)] | None = Field(
        None, description=f"free JSON object, at most {MAX_METADATA_DEPTH} levels deep"
    )


class SubjectOut(BaseModel):
    subject_id: str
    metadata: dict[str, Any]
    sample_count: int
    created: str
    updated: str


class SampleInfo(BaseModel):
    sample_id: int
    model: str = Field(description="the model that made this sample's embedding")
    source: Literal["image", "embedding"]
    content_sha256: str = Field(description="sha256 of the image bytes or the float32 embedding")
    has_image: bool
    created: str


class SubjectDetail(SubjectOut):
    samples: list[SampleInfo]


class SubjectPage(BaseModel):
    subjects: list[SubjectOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at end")


# -- inputs the domain checks itself --
# The document describes a well-formed request; the models stay lenient where the domain answers
# with a code of its own (no_input, empty_image, invalid_base64, invalid_embedding,
# validation_error "either ... not both"), so a client sees the most precise reason.
Base64Image = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "format": "byte", "minLength": 4, "description": "a base64 image file"}
    ),
]
Embedding = Annotated[
    list[float], WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": 1})
]
_ONE_INPUT = {"oneOf": [{"required": ["images"]}, {"required": ["embeddings"]}]}
# fpir and threshold exclude each other: either field is absent (`false` admits no value).
FPIR_OR_THRESHOLD = {
    "anyOf": [{"properties": {"fpir": False}}, {"properties": {"threshold": False}}]
}
_AT_LEAST_ONE = {"minItems": 1}
_EXACTLY_ONE = {"minItems": 1, "maxItems": 1}


# -- samples --


class SamplesJson(Strict):
    model_config = ConfigDict(json_schema_extra=_ONE_INPUT)

    images: list[Base64Image] | None = Field(
        None, description="base64-encoded image files", json_schema_extra=_AT_LEAST_ONE
    )
    embeddings: list[Embedding] | None = Field(
        None, description="embeddings of the model", json_schema_extra=_AT_LEAST_ONE
    )


class SampleOutcomeOut(BaseModel):
    sample_id: int | None
    status: Literal["enrolled", "rejected"]
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = Field(False, description="the same content was already enrolled")


class SamplesOut(BaseModel):
    subject_id: str
    model: str
    samples: list[SampleOutcomeOut]


class BulkItemIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["embedding"]}, {"required": ["image"]}]}
    )

    subject_id: Annotated[str, WithJsonSchema(ID_JSON_SCHEMA)] = Field(
        description="the subject (checked per item: a bad id rejects its item)"
    )
    embedding: Embedding | None = Field(None, description="an embedding of the model")
    image: Base64Image | None = Field(None, description="a base64-encoded image file")


class BulkSamplesJson(Strict):
    items: list[BulkItemIn] = Field(
        json_schema_extra=_AT_LEAST_ONE,
        description="samples of any subjects, one of `embedding` or `image` each; at most "
        "OPENGALLERY_MAX_BULK_ITEMS (default 5000) per request",
    )
    create_subjects: bool = Field(
        False, description="create unknown subjects; else their items are `subject_not_found`"
    )


class BulkOutcomeOut(BaseModel):
    subject_id: str
    sample_id: int | None
    status: Literal["enrolled", "rejected"]
    reason: str | None = None
    code: str | None = None
    duplicate: bool = Field(False, description="the subject already had this content")


class BulkSamplesOut(BaseModel):
    model: str
    samples: list[BulkOutcomeOut] = Field(description="one per item, in the order sent")


# -- calibration sets --
class CalibrationProbeOut(BaseModel):
    status: Literal["accepted", "rejected"]
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = Field(False, description="the same content was already in the set")


class OperatingPointOut(BaseModel):
    fpir: float
    threshold: float | None = Field(description="null for an empty gallery: nothing matches")
    fpir_upper: float = Field(
        description="one-sided 95% upper confidence bound (Clopper-Pearson) on the FPIR the "
        "threshold realises for strangers like the calibration set"
    )


class CalibrationOut(BaseModel):
    source: Literal["gallery", "bundle"] = Field(
        description="the gallery's own set once it holds `needed` probes, else the bundle's"
    )
    size: int = Field(description="non-mated calibration searches in the set in effect")
    min_fpir: float = Field(description="the smallest FPIR that set supports (10 / size)")
    fpir: float = Field(description="the gallery's default FPIR")
    gallery_set_size: int = Field(description="probes in the gallery's own set")
    needed: int = Field(description="searches the gallery's FPIR needs (10 / fpir)")
    thresholds: list[OperatingPointOut] = Field(
        description="FPIRs 0.001, 0.01, 0.1 and the gallery's, those the set supports"
    )


class CalibrationScoresOut(CalibrationOut):
    scores: list[float] | None = Field(
        None,
        description="with ?scores=true only: each probe of the set in effect, its best score "
        "against the gallery now (the scores the thresholds come from), descending; empty for "
        "a gallery without samples",
    )


class CalibrationSampleInfo(BaseModel):
    sample_id: int
    source: Literal["image", "embedding"]
    content_sha256: str = Field(description="sha256 of the image bytes or the float32 embedding")
    has_image: bool
    created: str


class CalibrationSamplePage(BaseModel):
    samples: list[CalibrationSampleInfo]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at end")


class CalibrationSamplesOut(CalibrationOut):
    model: str = Field(description="the model that embedded the probes")
    samples: list[CalibrationProbeOut]


# -- recognition --
class IdentifyJson(Strict):
    model_config = ConfigDict(json_schema_extra={**_ONE_INPUT, **FPIR_OR_THRESHOLD})

    images: list[Base64Image] | None = Field(
        None, description="base64-encoded probe images", json_schema_extra=_AT_LEAST_ONE
    )
    embeddings: list[Embedding] | None = Field(
        None, description="probe embeddings", json_schema_extra=_AT_LEAST_ONE
    )
    top_k: int = Field(
        5,
        ge=1,
        description="candidates per probe, one per subject; at most OPENGALLERY_MAX_TOP_K",
        json_schema_extra={"maximum": 100},
    )
    fpir: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    threshold: float | None = Field(None, allow_inf_nan=False, description="instead of fpir")


class Candidate(BaseModel):
    subject_id: str
    score: float


class IdentifyResultOut(BaseModel):
    decision: Literal["known", "unknown"]
    subject_id: str | None
    score: float | None = Field(description="best candidate's score; null for an empty gallery")
    threshold: float | None = Field(description="decision threshold; null for an empty gallery")
    fpir: float = Field(description="the FPIR the threshold is calibrated for (or estimated at)")
    fpir_upper: float = Field(
        description="one-sided 95% upper confidence bound (Clopper-Pearson) on the FPIR the "
        "threshold realises for strangers like the calibration set"
    )
    candidates: list[Candidate]


class IdentifyOut(BaseModel):
    model: str
    gallery: str
    results: list[IdentifyResultOut]


class VerifyJson(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": [name]} for name in ("image", "embedding", "images", "embeddings")
            ],
            **FPIR_OR_THRESHOLD,
        }
    )

    subject_id: Identifier
    image: Base64Image | None = Field(None, description="base64-encoded probe image")
    embedding: Embedding | None = Field(None, description="probe embedding")
    images: list[Base64Image] | None = Field(
        None,
        description="as in identify, with exactly one item (instead of image)",
        json_schema_extra=_EXACTLY_ONE,
    )
    embeddings: list[Embedding] | None = Field(
        None,
        description="as in identify, with exactly one item (instead of embedding)",
        json_schema_extra=_EXACTLY_ONE,
    )
    fpir: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    threshold: float | None = Field(None, allow_inf_nan=False)


class VerifyOut(BaseModel):
    model: str
    subject_id: str
    match: bool
    score: float
    threshold: float | None
    fpir: float
    fpir_upper: float = Field(description="95% upper confidence bound on the FPIR, as identify")


# -- models, keys, health --
class ModelOut(BaseModel):
    model: str
    name: str
    version: str
    embedding_dim: int
    calibration_size: int
    default: bool
    galleries: list[str]
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="the bundle manifest's evaluation figures"
    )


class ModelList(BaseModel):
    models: list[ModelOut]


class ModelRegister(Strict):
    path: str = Field(
        min_length=1,
        description="bundle directory on the server's disk (absolute)",
        json_schema_extra={"pattern": "^/"},
    )


class ModelRegistered(BaseModel):
    model: str


class KeyCreate(Strict):
    scope: Literal["admin", "client"] = "client"
    name: str | None = Field(None, max_length=256)


class KeyCreated(BaseModel):
    key: str = Field(description="the key; shown once, stored hashed")
    key_id: int
    scope: str
    name: str | None


class KeyInfo(BaseModel):
    key_id: int
    scope: str
    name: str | None
    created: str
    last_used: str | None = Field(
        description="when the key was last used (recorded at most once a minute); null if never"
    )


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    indexes_built: bool
    storage_full: bool = Field(
        False, description="writes fail for lack of space (answered 507); not ready meanwhile"
    )
    models: list[str]
    unavailable: list[Literal["database", "index"]] = Field(
        default_factory=list,
        description="dependencies that do not answer now (their requests answer 503 "
        "database_unavailable / index_unavailable); not ready meanwhile, ready again by "
        "itself when they are back",
    )


class JobProgress(BaseModel):
    done: int = Field(description="samples embedded by the target model so far")
    total: int = Field(description="samples to embed (grows if samples are enrolled meanwhile)")


class JobOut(BaseModel):
    job_id: str
    kind: Literal["migrate"]
    status: Literal["running", "succeeded", "failed"]
    gallery: str
    from_model: str = Field(description="the model the gallery used when the job started")
    to_model: str = Field(description="the model the gallery is migrating to")
    progress: JobProgress
    error: str | None = Field(None, description="why the job failed (failed jobs only)")
    attempts: int = Field(description="runs of the job: more than 1 after a restart resumed it")
    created: str
    updated: str


class MigrateRequest(Strict):
    model: str = Field(min_length=1, max_length=300, description="target model, name@version")


class MigrationAccepted(BaseModel):
    job_id: str
    status: Literal["running"] = "running"

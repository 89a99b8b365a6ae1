"""What the service answers, as dataclasses built from its JSON.

Fields the client does not know (a newer server's additions) are ignored; every result keeps
the JSON it was built from in `raw` (not shown in repr, not compared).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


@dataclass(frozen=True)
class _Result:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**cls._known(data), raw=dict(data))

    @classmethod
    def _known(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        names = {f.name for f in fields(cls) if f.init and f.name != "raw"}
        return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class GalleryCalibration(_Result):
    """The calibration a gallery answers with (in get_gallery's answer)."""

    source: str  # "gallery" (its own strangers) or "bundle" (the model's)
    size: int  # non-mated calibration searches in that set
    min_fpir: float  # the smallest FPIR it supports (10 / size)
    fpir: float  # the gallery's default FPIR
    threshold: float | None  # its threshold now; None for an empty gallery
    fpir_upper: float | None  # 95% upper confidence bound on the FPIR that threshold realises
    gallery_set_size: int  # probes in the gallery's own set
    needed: int  # searches the gallery's FPIR needs; its own set takes effect from this size


@dataclass(frozen=True)
class Gallery(_Result):
    name: str
    model: str  # name@version of the model that embeds its samples
    fpir: float  # the default FPIR of identify
    scoring: str  # "max" or "mean"
    keep_images: bool
    subject_count: int
    sample_count: int
    version: int
    created: str
    calibration: GalleryCalibration | None = None  # from get_gallery only

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = cls._known(data)
        if known.get("calibration") is not None:
            known["calibration"] = GalleryCalibration.from_json(known["calibration"])
        return cls(**known, raw=dict(data))


@dataclass(frozen=True)
class OperatingPoint(_Result):
    fpir: float
    threshold: float | None  # None for an empty gallery: nothing matches
    fpir_upper: float  # 95% upper confidence bound (Clopper-Pearson) on the realised FPIR


@dataclass(frozen=True)
class Calibration(_Result):
    """A gallery's calibration (GET .../calibration, and after a change to its set)."""

    source: str  # "gallery" once its own set holds `needed` probes, else "bundle"
    size: int
    min_fpir: float
    fpir: float
    gallery_set_size: int
    needed: int
    thresholds: list[OperatingPoint]  # 0.001, 0.01, 0.1 and the gallery's FPIR, if supported
    # get_calibration(scores=True) only: every probe's best score against the gallery, descending
    scores: list[float] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = cls._known(data)
        known["thresholds"] = [OperatingPoint.from_json(item) for item in data["thresholds"]]
        return cls(**known, raw=dict(data))


@dataclass(frozen=True)
class CalibrationSample(_Result):
    """A stored probe of a gallery's own calibration set."""

    sample_id: int
    source: str  # "image" or "embedding"
    content_sha256: str
    has_image: bool
    created: str


@dataclass(frozen=True)
class CalibrationSamplePage(_Result):
    samples: list[CalibrationSample]
    next_cursor: str | None  # pass to list_calibration_samples(cursor=...); None at the end

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        samples = [CalibrationSample.from_json(item) for item in data["samples"]]
        return cls(samples=samples, next_cursor=data.get("next_cursor"), raw=dict(data))


@dataclass(frozen=True)
class CalibrationProbe(_Result):
    """What happened to one probe of a calibration upload."""

    status: str  # "accepted" or "rejected"
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = False  # this content was already in the set

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


@dataclass(frozen=True)
class CalibrationUpload(_Result):
    model: str  # the model that embedded the probes
    samples: list[CalibrationProbe]  # in the order sent
    calibration: Calibration  # the gallery's calibration after the upload

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        samples = [CalibrationProbe.from_json(item) for item in data["samples"]]
        return cls(
            model=data["model"],
            samples=samples,
            calibration=Calibration.from_json(data),
            raw=dict(data),
        )

    @property
    def rejected(self) -> list[CalibrationProbe]:
        return [sample for sample in self.samples if not sample.accepted]


@dataclass(frozen=True)
class Sample(_Result):
    """A stored sample of a subject (GET subject)."""

    sample_id: int
    model: str
    source: str  # "image" or "embedding"
    content_sha256: str
    has_image: bool
    created: str


@dataclass(frozen=True)
class Subject(_Result):
    subject_id: str
    metadata: dict[str, Any]
    sample_count: int
    created: str
    updated: str
    # Only from get_subject; None in lists.
    samples: list[Sample] | None = None
    # Only from put_subject: True when that PUT created the subject (201), False when it existed.
    new: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = cls._known(data)
        if known.get("samples") is not None:
            known["samples"] = [Sample.from_json(item) for item in known["samples"]]
        return cls(**known, raw=dict(data))


@dataclass(frozen=True)
class SubjectPage(_Result):
    subjects: list[Subject]
    next_cursor: str | None  # pass to list_subjects(cursor=...) for the next page; None at the end

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        subjects = [Subject.from_json(item) for item in data["subjects"]]
        return cls(subjects=subjects, next_cursor=data.get("next_cursor"), raw=dict(data))


@dataclass(frozen=True)
class SampleOutcome(_Result):
    """What happened to one sample of an enrolment request."""

    sample_id: int | None
    status: str  # "enrolled" or "rejected"
    reason: str | None = None
    code: str | None = None  # why it was rejected, e.g. invalid_image
    content_sha256: str | None = None
    duplicate: bool = False  # this content was already enrolled for the subject

    @property
    def enrolled(self) -> bool:
        return self.status == "enrolled"


@dataclass(frozen=True)
class Enrolment(_Result):
    subject_id: str
    model: str
    samples: list[SampleOutcome]  # in the order the samples were sent

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        samples = [SampleOutcome.from_json(item) for item in data["samples"]]
        return cls(
            subject_id=data["subject_id"], model=data["model"], samples=samples, raw=dict(data)
        )

    @property
    def enrolled(self) -> list[SampleOutcome]:
        return [sample for sample in self.samples if sample.enrolled]

    @property
    def rejected(self) -> list[SampleOutcome]:
        return [sample for sample in self.samples if not sample.enrolled]


@dataclass(frozen=True)
class BulkOutcome(_Result):
    """What happened to one item of a bulk enrolment."""

    subject_id: str
    sample_id: int | None
    status: str  # "enrolled" or "rejected"
    reason: str | None = None
    code: str | None = None  # why it was rejected, e.g. subject_not_found, invalid_image
    duplicate: bool = False  # the subject already had this content

    @property
    def enrolled(self) -> bool:
        return self.status == "enrolled"


@dataclass(frozen=True)
class BulkEnrolment(_Result):
    model: str
    samples: list[BulkOutcome]  # in the order the items were sent

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        samples = [BulkOutcome.from_json(item) for item in data["samples"]]
        return cls(model=data["model"], samples=samples, raw=dict(data))

    @property
    def enrolled(self) -> list[BulkOutcome]:
        return [sample for sample in self.samples if sample.enrolled]

    @property
    def rejected(self) -> list[BulkOutcome]:
        return [sample for sample in self.samples if not sample.enrolled]


@dataclass(frozen=True)
class Candidate(_Result):
    subject_id: str
    score: float


@dataclass(frozen=True)
class IdentifyResult(_Result):
    """The answer for one probe."""

    decision: str  # "known" or "unknown"
    subject_id: str | None  # the best subject when known, else None
    score: float | None  # the best candidate's score; None on an empty gallery
    threshold: float | None  # the decision threshold; None on an empty gallery
    fpir: float
    candidates: list[Candidate]  # best first, one per subject
    # 95% upper confidence bound on the FPIR the threshold realises (None from older servers)
    fpir_upper: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = cls._known(data)
        known["candidates"] = [Candidate.from_json(item) for item in data["candidates"]]
        return cls(**known, raw=dict(data))

    @property
    def known(self) -> bool:
        return self.decision == "known"


@dataclass(frozen=True)
class Identification(_Result):
    model: str
    gallery: str
    results: list[IdentifyResult]  # one per probe, in the order sent

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        results = [IdentifyResult.from_json(item) for item in data["results"]]
        return cls(model=data["model"], gallery=data["gallery"], results=results, raw=dict(data))


@dataclass(frozen=True)
class Verification(_Result):
    model: str
    subject_id: str
    match: bool
    score: float
    threshold: float | None
    fpir: float
    fpir_upper: float | None = None  # as IdentifyResult.fpir_upper


@dataclass(frozen=True)
class ModelInfo(_Result):
    model: str  # name@version
    name: str
    version: str
    embedding_dim: int
    calibration_size: int
    default: bool
    galleries: list[str]


@dataclass(frozen=True)
class JobProgress(_Result):
    done: int
    total: int


@dataclass(frozen=True)
class Job(_Result):
    job_id: str
    kind: str  # "migrate"
    status: str  # "running", "succeeded" or "failed"
    gallery: str
    from_model: str
    to_model: str
    progress: JobProgress
    error: str | None
    attempts: int
    created: str
    updated: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = cls._known(data)
        known["progress"] = JobProgress.from_json(data["progress"])
        return cls(**known, raw=dict(data))

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclass(frozen=True)
class CreatedKey(_Result):
    key: str  # shown once: the service stores only its hash
    key_id: int
    scope: str  # "admin" or "client"
    name: str | None


@dataclass(frozen=True)
class KeyInfo(_Result):
    """A key as listed (never the key itself)."""

    key_id: int
    scope: str
    name: str | None = None
    created: str | None = None
    last_used: str | None = None  # recorded at most once a minute; None if never used


@dataclass(frozen=True)
class Health(_Result):
    status: str


@dataclass(frozen=True)
class Readiness(_Result):
    ready: bool
    model_loaded: bool
    indexes_built: bool
    models: list[str]
    storage_full: bool = False  # writes fail for lack of space (507) until space is freed

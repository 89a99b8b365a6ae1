"""What the store returns and takes: plain frozen dataclasses, no database types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GalleryRecord:
    name: str
    model_id: str
    fpir: float
    scoring: str  # "max" over samples or "mean" template
    keep_images: bool
    version: int
    created: str
    subject_count: int = 0
    sample_count: int = 0


@dataclass(frozen=True)
class SubjectRecord:
    pk: int  # internal integer key (the index refers to subjects by it)
    subject_id: str
    metadata: dict[str, Any]
    created: str
    updated: str
    sample_count: int = 0


@dataclass(frozen=True)
class SampleRecord:
    sample_id: int
    subject_id: str
    model_id: str
    source: str  # "image" or "embedding"
    content_sha256: str
    has_image: bool
    created: str


@dataclass(frozen=True)
class NewSample:
    """A sample to enrol: its embedding (made by `model_id`) and, optionally, its image bytes."""

    content_sha256: str
    source: str
    embedding: np.ndarray  # float32 [D], L2-normalised
    image: bytes | None = None


@dataclass(frozen=True)
class AddedSample:
    sample_id: int
    created: bool  # False when the same content was already enrolled for this subject


@dataclass(frozen=True)
class BulkAdded:
    """One item of a bulk enrolment: where it went, or `subject_pk` None when its subject
    does not exist (and was not to be created)."""

    subject_pk: int | None
    sample_id: int | None
    created: bool  # False for content the subject already had (or an earlier item of the call)


@dataclass(frozen=True)
class BulkEnrolled:
    items: list[BulkAdded]  # in the order given
    version: int  # the gallery's version after the call (bumped only if something was added)


@dataclass(frozen=True)
class GalleryEmbeddings:
    """Everything needed to (re)build a gallery's index for one model."""

    version: int
    sample_ids: np.ndarray  # int64 [N]
    subject_pks: np.ndarray  # int64 [N]
    vectors: np.ndarray  # float32 [N, D]
    subjects: dict[int, str] = field(default_factory=dict)  # pk -> subject_id (all subjects)


@dataclass(frozen=True)
class CalibrationSampleRecord:
    """A probe of a gallery's own calibration set."""

    sample_id: int
    source: str  # "image" or "embedding"
    content_sha256: str
    has_image: bool
    created: str


@dataclass(frozen=True)
class CalibrationEmbeddings:
    """A gallery's own calibration set embedded by one model."""

    sample_ids: np.ndarray  # int64 [M]
    vectors: np.ndarray  # float32 [M, D] (D = 0 when M = 0)


@dataclass(frozen=True)
class StoredImage:
    """A sample's kept image bytes (None when enrolled from an embedding or not kept)."""

    sample_id: int
    image: bytes | None


@dataclass(frozen=True)
class JobRecord:
    """A persisted background job (a gallery migration); status running/succeeded/failed."""

    job_id: str
    kind: str
    gallery: str
    source_model: str
    target_model: str
    status: str
    done: int
    total: int
    error: str | None
    attempts: int
    created: str
    updated: str


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: int
    scope: str
    name: str | None
    created: str
    last_used: str | None = None  # recorded at most once a minute per key


@dataclass(frozen=True)
class ExportedSample:
    """One sample as a gallery export holds it: its embedding by the gallery's model and, when
    the gallery keeps images, its image bytes."""

    sample_id: int
    subject_id: str
    source: str  # "image" or "embedding"
    content_sha256: str
    embedding: np.ndarray  # float32 [D]
    image: bytes | None


@dataclass(frozen=True)
class ExportedProbe:
    """One probe of a gallery's own calibration set as an export holds it: its embedding by
    the gallery's model and, when kept, its image bytes."""

    sample_id: int
    source: str  # "image" or "embedding"
    content_sha256: str
    embedding: np.ndarray  # float32 [D]
    image: bytes | None


@dataclass(frozen=True)
class ChangeRecord:
    """One entry of the change log: a committed write that changes what a replica holds in
    memory, in commit order (`seq` grows with commit order; it may skip numbers)."""

    seq: int
    kind: str  # one of service.storage.protocols.changes.CHANGE_KINDS
    gallery: str | None = None
    subject_pk: int | None = None
    subject_id: str | None = None
    sample_ids: tuple[int, ...] = ()
    model_id: str | None = None
    key_id: int | None = None
    created: str = ""

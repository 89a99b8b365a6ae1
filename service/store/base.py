"""The storage interface. The database is the source of truth; the vector index is derived.

Routes never talk to a database directly: they go through a `Store`, so that a PostgreSQL
store can follow the SQLite one without touching them. Every mutation of a gallery bumps the
gallery's `version` in the same transaction, which is what caches (thresholds, index
snapshots) key on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class StoreError(Exception):
    """Base of the store's errors."""


class AlreadyExistsError(StoreError):
    pass


class StoreConflict(StoreError):
    """The state changed under an operation that expected it not to (e.g. a model switch)."""


class NotFoundError(StoreError):
    def __init__(self, what: str, name: object) -> None:
        super().__init__(f"{what} {name!r} does not exist")
        self.what = what
        self.name = name


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
class GalleryEmbeddings:
    """Everything needed to (re)build a gallery's index for one model."""

    version: int
    sample_ids: np.ndarray  # int64 [N]
    subject_pks: np.ndarray  # int64 [N]
    vectors: np.ndarray  # float32 [N, D]
    subjects: dict[int, str] = field(default_factory=dict)  # pk -> subject_id (all subjects)


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


class Store(ABC):
    """Durable state of the service. Implementations must be safe to call from many threads."""

    # -- galleries --
    @abstractmethod
    def create_gallery(
        self, name: str, model_id: str, fpir: float, scoring: str, keep_images: bool
    ) -> GalleryRecord: ...

    @abstractmethod
    def get_gallery(self, name: str) -> GalleryRecord | None: ...

    @abstractmethod
    def list_galleries(self) -> list[GalleryRecord]: ...

    @abstractmethod
    def delete_gallery(self, name: str) -> bool: ...

    # -- subjects --
    @abstractmethod
    def put_subject(
        self, gallery: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> tuple[SubjectRecord, bool, int]:
        """Create or update a subject: (record, created?, new gallery version)."""

    @abstractmethod
    def get_subject(self, gallery: str, subject_id: str) -> SubjectRecord | None: ...

    @abstractmethod
    def list_subjects(self, gallery: str, limit: int, after: str | None) -> list[SubjectRecord]:
        """Subjects ordered by subject_id, strictly after `after`."""

    @abstractmethod
    def delete_subject(self, gallery: str, subject_id: str) -> tuple[int, list[int], int]:
        """Delete a subject and its samples: (subject pk, removed sample ids, new version)."""

    # -- samples --
    @abstractmethod
    def add_samples(
        self, gallery: str, subject_id: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[SubjectRecord, list[AddedSample], int]:
        """Add samples in one transaction; committed when this returns."""

    @abstractmethod
    def bulk_enrol(
        self, gallery: str, model_id: str, items: Sequence[tuple[str, NewSample]]
    ) -> int:
        """Create subjects as needed and add one sample each, in one transaction (imports and
        benchmarks; the running service must be restarted to index them). Returns the new
        gallery version."""

    @abstractmethod
    def list_samples(self, gallery: str, subject_id: str) -> list[SampleRecord]: ...

    @abstractmethod
    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> tuple[int, int]:
        """Delete one sample: (subject pk, new version)."""

    @abstractmethod
    def load_embeddings(self, gallery: str, model_id: str) -> GalleryEmbeddings: ...

    # -- API keys --
    @abstractmethod
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord: ...

    @abstractmethod
    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    def count_api_keys(self, scope: str | None = None) -> int: ...

    # -- registered model bundles --
    @abstractmethod
    def register_model(self, model_id: str, path: str) -> None: ...

    @abstractmethod
    def registered_models(self) -> dict[str, str]: ...

    # -- migrations (issue 5) --
    @abstractmethod
    def count_samples_without_image(self, gallery: str) -> tuple[int, int]:
        """(samples in the gallery, of which without a kept image)."""

    @abstractmethod
    def count_samples_missing_embedding(self, gallery: str, model_id: str) -> int: ...

    @abstractmethod
    def images_missing_embedding(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[StoredImage]:
        """Up to `limit` samples with id > `after_id`, by id, without a `model_id` embedding."""

    @abstractmethod
    def put_embeddings(self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store shadow embeddings (one transaction); samples deleted meanwhile are skipped."""

    @abstractmethod
    def drop_embeddings(self, gallery: str, model_id: str) -> None: ...

    @abstractmethod
    def switch_gallery_model(
        self, gallery: str, source_model: str, target_model: str, job_id: str | None
    ) -> int:
        """In ONE transaction: check every sample has a `target_model` embedding, drop the
        others, point the gallery at `target_model`, mark the job succeeded; returns the new
        gallery version. StoreConflict (nothing changed) if a sample lacks one."""

    @abstractmethod
    def create_job(
        self, job_id: str, kind: str, gallery: str, source_model: str, target_model: str
    ) -> JobRecord:
        """StoreConflict if a job is already running on the gallery."""

    @abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list_jobs(self, status: str | None = None) -> list[JobRecord]: ...

    @abstractmethod
    def update_job(
        self,
        job_id: str,
        *,
        done: int | None = None,
        total: int | None = None,
        status: str | None = None,
        error: str | None = None,
        attempt: bool = False,
    ) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

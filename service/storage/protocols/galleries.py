"""The gallery data: galleries, their subjects, samples and per-model embeddings.

Every mutation of a gallery bumps the gallery's `version` in the same transaction: a reader
can tell whether anything changed since it last looked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.storage.records import (
    AddedSample,
    BulkEnrolled,
    GalleryEmbeddings,
    GalleryRecord,
    NewSample,
    SampleRecord,
    StoredImage,
    SubjectRecord,
)


class GalleryStore(ABC):
    """Galleries, subjects, samples and embeddings. Safe to call from many threads."""

    # -- galleries --
    @abstractmethod
    def create_gallery(
        self, name: str, model_id: str, fpir: float, scoring: str, keep_images: bool
    ) -> GalleryRecord:
        """A new gallery at version 0; AlreadyExistsError if the name is taken."""

    @abstractmethod
    def get_gallery(self, name: str) -> GalleryRecord | None: ...

    @abstractmethod
    def list_galleries(self) -> list[GalleryRecord]:
        """Every gallery, ordered by name."""

    @abstractmethod
    def delete_gallery(self, name: str) -> bool:
        """Delete a gallery with everything in it; False if it did not exist."""

    # -- subjects --
    @abstractmethod
    def put_subject(
        self, gallery: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> tuple[SubjectRecord, bool, int]:
        """Create or update a subject: (record, created?, new gallery version). `None`
        metadata keeps an existing subject's metadata."""

    @abstractmethod
    def get_subject(self, gallery: str, subject_id: str) -> SubjectRecord | None: ...

    @abstractmethod
    def list_subjects(
        self, gallery: str, limit: int, after: str | None, prefix: str | None = None
    ) -> list[SubjectRecord]:
        """Subjects ordered by subject_id, strictly after `after`; only ids that start with
        `prefix` (compared character by character, case-sensitive) when it is given."""

    @abstractmethod
    def delete_subject(self, gallery: str, subject_id: str) -> tuple[int, list[int], int]:
        """Delete a subject and its samples: (subject pk, removed sample ids, new version)."""

    # -- samples --
    @abstractmethod
    def add_samples(
        self, gallery: str, subject_id: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[SubjectRecord, list[AddedSample], int]:
        """Add samples in one transaction; committed when this returns. A sample whose
        content hash the subject already has is not added again (`created=False`); the
        version is bumped only if something was added."""

    @abstractmethod
    def bulk_enrol(
        self,
        gallery: str,
        model_id: str,
        items: Sequence[tuple[str, NewSample]],
        *,
        create_subjects: bool = True,
    ) -> BulkEnrolled:
        """(subject_id, sample) pairs in ONE transaction, committed when this returns.

        Subjects that do not exist are created (with empty metadata) when `create_subjects`,
        else their items are reported with `subject_pk` None and nothing is added for them.
        Content a subject already has (or that an earlier item of the call added) is not
        added again: the item reports the existing sample with `created=False`."""

    @abstractmethod
    def list_samples(self, gallery: str, subject_id: str) -> list[SampleRecord]:
        """A subject's samples, ordered by sample id."""

    @abstractmethod
    def get_sample_image(self, gallery: str, subject_id: str, sample_id: int) -> bytes | None:
        """The kept image of one of the subject's samples (None when none was kept);
        NotFoundError for a gallery, subject or sample that does not exist."""

    @abstractmethod
    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> tuple[int, int]:
        """Delete one sample: (subject pk, new version)."""

    @abstractmethod
    def load_embeddings(self, gallery: str, model_id: str) -> GalleryEmbeddings:
        """The gallery's `model_id` embeddings, by sample id, with its version."""

    # -- model migrations: shadow embeddings and the atomic switch --
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
    def drop_embeddings(self, gallery: str, model_id: str) -> None:
        """Drop the gallery's `model_id` embeddings, of samples and of calibration probes."""

    @abstractmethod
    def switch_gallery_model(
        self,
        gallery: str,
        source_model: str,
        target_model: str,
        job_id: str | None,
        *,
        lease: tuple[str, str] | None = None,
    ) -> int:
        """In ONE transaction: check every sample and calibration probe has a `target_model`
        embedding, drop the others, point the gallery at `target_model`, mark the job
        succeeded; returns the new gallery version. StoreConflict (nothing changed) if the
        gallery is not on `source_model`, a sample or probe lacks a `target_model` embedding,
        or `lease` (job id, owner) names a job whose lease that owner does not hold."""

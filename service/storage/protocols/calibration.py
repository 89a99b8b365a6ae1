"""A gallery's own calibration set: non-mated probes from the deployment, with their embeddings.

Like samples, each probe is stored once per content hash (idempotent uploads), keeps its image
when the gallery keeps images (to re-embed it when the gallery migrates), and has one embedding
row per model. Every change bumps the gallery's `version` in the same transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from service.storage.records import (
    AddedSample,
    CalibrationEmbeddings,
    CalibrationSampleRecord,
    NewSample,
    StoredImage,
)


class CalibrationStore(ABC):
    """Calibration sets of galleries. Safe to call from many threads."""

    @abstractmethod
    def add_calibration_samples(
        self, gallery: str, model_id: str, samples: Sequence[NewSample]
    ) -> tuple[list[AddedSample], int]:
        """Add probes (embedded by `model_id`) in one transaction, committed on return:
        (one AddedSample per input, `created=False` for content the set already holds; the
        set's size after). NotFoundError for an unknown gallery."""

    @abstractmethod
    def count_calibration_samples(self, gallery: str) -> tuple[int, int]:
        """(probes in the gallery's set, of which without a kept image)."""

    @abstractmethod
    def list_calibration_samples(
        self, gallery: str, after_id: int, limit: int
    ) -> list[CalibrationSampleRecord]:
        """Up to `limit` probes of the set with sample id > `after_id`, by id."""

    @abstractmethod
    def load_calibration(self, gallery: str, model_id: str) -> CalibrationEmbeddings:
        """The set's `model_id` embeddings, by sample id."""

    @abstractmethod
    def clear_calibration(self, gallery: str) -> int:
        """Delete the gallery's whole set in one transaction; returns how many were deleted."""

    # -- model migrations: shadow embeddings (switched by GalleryStore.switch_gallery_model) --
    @abstractmethod
    def calibration_images_missing_embedding(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[StoredImage]:
        """Up to `limit` probes with id > `after_id`, by id, without a `model_id` embedding."""

    @abstractmethod
    def put_calibration_embeddings(
        self, model_id: str, sample_ids: Sequence[int], vectors: np.ndarray
    ) -> None:
        """Store shadow embeddings (one transaction); probes deleted meanwhile are skipped."""

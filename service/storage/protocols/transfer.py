"""Gallery export and import: read a gallery in pages, and write a whole one in one transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from service.storage.records import ExportedProbe, ExportedSample, GalleryRecord, NewSample


class TransferStore(ABC):
    @abstractmethod
    def export_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedSample]:
        """Up to `limit` samples with id > `after_id`, by id, with their `model_id` embedding
        and kept image (samples without a `model_id` embedding are left out)."""

    @abstractmethod
    def export_calibration_samples(
        self, gallery: str, model_id: str, after_id: int, limit: int
    ) -> list[ExportedProbe]:
        """Up to `limit` probes of the gallery's own calibration set with id > `after_id`, by
        id, with their `model_id` embedding and kept image (probes without a `model_id`
        embedding are left out)."""

    @abstractmethod
    def import_gallery(
        self,
        name: str,
        model_id: str,
        fpir: float,
        scoring: str,
        keep_images: bool,
        subjects: Sequence[tuple[str, Mapping[str, Any]]],
        samples: Sequence[tuple[str, NewSample]],
        calibration: Sequence[NewSample] = (),
    ) -> GalleryRecord:
        """Create gallery `name` with its subjects (id, metadata), samples (subject id,
        sample; embeddings made by `model_id`) and its own calibration set (probes, embedded
        by `model_id`), samples and probes in the order given, in ONE transaction: all of it
        or nothing. Images are kept only when `keep_images`. AlreadyExistsError if the name
        is taken; NotFoundError for a sample whose subject is not in `subjects`;
        AlreadyExistsError for two probes with the same content."""

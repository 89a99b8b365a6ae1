"""Galleries, subjects and samples: the writes, each committed to the store, then indexed.

Every method is synchronous and CPU- or IO-bound: the HTTP wing runs them in worker threads.
A mutation commits to the store first and then applies the same change to the gallery's
index, both under the gallery's mutation lock (service/core/live.py), so the index equals the
database after each operation.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.scoring import DEFAULT_SCORING, check_scoring
from service.core.calibration import check_fpir_supported, default_fpir
from service.core.errors import ServiceError, not_found, store_errors
from service.core.images import media_type
from service.core.ingest import Ingest, Upload
from service.core.live import ActiveModel, LiveGalleries, LiveGallery
from service.core.metrics import Metrics
from service.core.models import LoadedModels
from service.settings import Settings
from service.storage import (
    AddedSample,
    GalleryRecord,
    NewSample,
    SampleRecord,
    Store,
    SubjectRecord,
)

_ENROL_ATTEMPTS = 3


@dataclass(frozen=True)
class SampleOutcome:
    sample_id: int | None
    status: str  # "enrolled" | "rejected"
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class Enrolment:
    model_id: str  # the model that embedded the samples
    outcomes: list[SampleOutcome]  # one per upload, in order


@dataclass(frozen=True)
class SubjectWrite:
    record: SubjectRecord
    created: bool


@dataclass(frozen=True)
class SubjectDetail:
    record: SubjectRecord
    samples: list[SampleRecord]


@dataclass(frozen=True)
class SampleImage:
    data: bytes
    media_type: str


@dataclass(frozen=True)
class SubjectPage:
    subjects: list[SubjectRecord]
    last: str | None  # the id to continue after; None on the last page


class Galleries:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        models: LoadedModels,
        live: LiveGalleries,
        ingest: Ingest,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.live = live
        self.ingest = ingest
        self.metrics = metrics

    # -- galleries --
    def create_gallery(
        self,
        name: str,
        model_id: str | None = None,
        fpir: float | None = None,
        scoring: str = DEFAULT_SCORING,
        keep_images: bool | None = None,
    ) -> GalleryRecord:
        check_scoring(scoring)
        model_id = model_id or self.models.default_model_id
        model = self.models.get(model_id) if model_id else None
        if model is None:
            known = ", ".join(m.model_id for m in self.models.all()) or "none"
            raise ServiceError(
                "unknown_model", f"model {model_id!r} is not registered (registered: {known})"
            )
        if fpir is None:
            fpir = default_fpir(self.settings.default_fpir, len(model.calibration))
        check_fpir_supported(fpir, len(model.calibration))
        keep = self.settings.keep_images if keep_images is None else keep_images
        with store_errors():
            record = self.store.create_gallery(name, model.model_id, fpir, scoring, keep)
        self.live.add(record, model)
        return record

    def get_gallery(self, name: str) -> GalleryRecord:
        record = self.store.get_gallery(name)
        if record is None:
            raise not_found("gallery", name)
        return record

    def list_galleries(self) -> list[GalleryRecord]:
        return self.store.list_galleries()

    def delete_gallery(self, name: str) -> None:
        gallery = self.live.find(name)
        with gallery.lock if gallery else threading.Lock():
            if not self.store.delete_gallery(name):
                raise not_found("gallery", name)
            self.live.remove(name)

    # -- subjects --
    def put_subject(
        self, gallery_name: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> SubjectWrite:
        if metadata is not None:
            size = len(json.dumps(metadata).encode("utf-8"))
            if size > self.settings.max_metadata_bytes:
                raise ServiceError(
                    "metadata_too_large",
                    f"metadata is {size} bytes of JSON; "
                    f"the limit is {self.settings.max_metadata_bytes}",
                )
        gallery = self.live.get(gallery_name)
        with gallery.lock, store_errors():
            record, created, _ = self.store.put_subject(gallery_name, subject_id, metadata)
            gallery.active.index.set_subject(record.pk, subject_id)
        return SubjectWrite(record, created)

    def get_subject(self, gallery_name: str, subject_id: str) -> SubjectDetail:
        if self.store.get_gallery(gallery_name) is None:
            raise not_found("gallery", gallery_name)
        with store_errors():
            record = self.store.get_subject(gallery_name, subject_id)
            if record is None:
                raise not_found("subject", subject_id)
            return SubjectDetail(record, self.store.list_samples(gallery_name, subject_id))

    def list_subjects(
        self, gallery_name: str, limit: int, after: str | None, prefix: str | None = None
    ) -> SubjectPage:
        """Up to `limit` subjects ordered by id, strictly after `after`, whose ids start with
        `prefix` when it is given."""
        if not 1 <= limit <= self.settings.max_page_size:
            raise ServiceError(
                "invalid_limit", f"limit must be 1-{self.settings.max_page_size}, got {limit}"
            )
        with store_errors():
            records = self.store.list_subjects(gallery_name, limit + 1, after, prefix)
        page = records[:limit]
        return SubjectPage(page, page[-1].subject_id if len(records) > limit else None)

    def delete_subject(self, gallery_name: str, subject_id: str) -> None:
        gallery = self.live.get(gallery_name)
        with gallery.lock, store_errors():
            pk, sample_ids, _ = self.store.delete_subject(gallery_name, subject_id)
            gallery.active.index.remove_subject(pk, np.array(sample_ids, dtype=np.int64))

    # -- samples --
    def enrol(self, gallery_name: str, subject_id: str, uploads: list[Upload]) -> Enrolment:
        """Enrol uploads: one outcome per upload, enrolled samples committed on return."""
        self.ingest.check_count(uploads, "samples")
        gallery = self.live.get(gallery_name)
        with store_errors():  # before any decoding: a missing subject costs nothing
            if self.store.get_subject(gallery_name, subject_id) is None:
                raise not_found("subject", subject_id)
        # A migration may switch the gallery's model between embedding and committing: then
        # embed again with the new model (a switch is rare, so a few attempts suffice).
        for _ in range(_ENROL_ATTEMPTS):
            active = gallery.active
            prepared = self.ingest.prepare(active.model, uploads)
            new_samples = [
                NewSample(
                    content_sha256=item.content_sha256,
                    source=item.source,
                    embedding=item.vector,
                    image=item.image if gallery.record.keep_images else None,
                )
                for item in prepared
                if item.vector is not None
            ]
            added = self._commit(gallery, active, subject_id, new_samples) if new_samples else []
            if added is not None:
                break
        else:
            raise ServiceError("model_changed", "the gallery changed model; retry")
        outcomes: list[SampleOutcome] = []
        added_iter = iter(added)
        for item in prepared:
            if item.rejection is not None:
                outcomes.append(
                    SampleOutcome(
                        None, "rejected", reason=str(item.rejection), code=item.rejection_code
                    )
                )
            else:
                sample = next(added_iter)
                outcomes.append(
                    SampleOutcome(
                        sample.sample_id,
                        "enrolled",
                        content_sha256=item.content_sha256,
                        duplicate=not sample.created,
                    )
                )
        enrolled = sum(outcome.status == "enrolled" for outcome in outcomes)
        self.metrics.observe_enrolment(gallery_name, enrolled, len(outcomes) - enrolled)
        return Enrolment(active.model.model_id, outcomes)

    def _commit(
        self,
        gallery: LiveGallery,
        active: ActiveModel,
        subject_id: str,
        new_samples: list[NewSample],
    ) -> list[AddedSample] | None:
        """Commit samples embedded by `active`, then index them; None if the gallery switched
        to another model meanwhile (nothing is stored then)."""
        with gallery.lock:
            if gallery.active is not active:
                return None
            with store_errors():
                record, added, _ = self.store.add_samples(
                    gallery.name, subject_id, active.model.model_id, new_samples
                )
            fresh = [i for i, item in enumerate(added) if item.created]
            if fresh:
                active.index.add_samples(
                    record.pk,
                    subject_id,
                    np.array([added[i].sample_id for i in fresh], dtype=np.int64),
                    np.stack([new_samples[i].embedding for i in fresh]),
                )
            return added

    def sample_image(self, gallery_name: str, subject_id: str, sample_id: int) -> SampleImage:
        """A sample's kept image with its media type; not_found when none was kept."""
        with store_errors():
            data = self.store.get_sample_image(gallery_name, subject_id, sample_id)
        if data is None:
            raise ServiceError(
                "not_found",
                f"sample {sample_id} has no kept image (it was enrolled as an embedding, or "
                "the gallery keeps no images)",
            )
        return SampleImage(data, media_type(data))

    def delete_sample(self, gallery_name: str, subject_id: str, sample_id: int) -> None:
        gallery = self.live.get(gallery_name)
        with gallery.lock, store_errors():
            self.store.delete_sample(gallery_name, subject_id, sample_id)
            gallery.active.index.remove_samples(np.array([sample_id], dtype=np.int64))

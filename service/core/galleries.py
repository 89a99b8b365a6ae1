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
from service.core.ids import check_id
from service.core.images import media_type
from service.core.ingest import Ingest, Prepared, Upload
from service.core.live import ActiveModel, LiveGalleries, LiveGallery
from service.core.metrics import Metrics
from service.core.models import LoadedModels
from service.settings import Settings
from service.storage import (
    AddedSample,
    BulkAdded,
    BulkEnrolled,
    GalleryRecord,
    NewSample,
    SampleRecord,
    Store,
    StoreConflict,
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
class BulkItem:
    subject_id: str
    upload: Upload


@dataclass(frozen=True)
class BulkOutcome:
    subject_id: str
    sample_id: int | None
    status: str  # "enrolled" | "rejected"
    reason: str | None = None
    code: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class BulkEnrolment:
    model_id: str
    outcomes: list[BulkOutcome]  # one per item, in order


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
            gallery.note_local(("put", record.pk))
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
        with gallery.lock, store_errors(), self.live.writing(gallery):
            pk, sample_ids, _ = self.store.delete_subject(gallery_name, subject_id)
            active = gallery.active
            active.index.remove_subject(pk, np.array(sample_ids, dtype=np.int64))
            active.calibration.subject_removed(subject_id)
            gallery.note_local(("delete", pk))

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
        with gallery.lock, self.live.writing(gallery):
            if gallery.active is not active:
                return None
            try:
                with store_errors():
                    record, added, _ = self.store.add_samples(
                        gallery.name, subject_id, active.model.model_id, new_samples
                    )
            except StoreConflict:
                pass  # another replica switched the gallery's model: caught up below
            else:
                fresh = [i for i, item in enumerate(added) if item.created]
                if fresh:
                    vectors = np.stack([new_samples[i].embedding for i in fresh])
                    active.index.add_samples(
                        record.pk,
                        subject_id,
                        np.array([added[i].sample_id for i in fresh], dtype=np.int64),
                        vectors,
                    )
                    active.calibration.samples_added(subject_id, vectors)
                    gallery.note_local(*(("add", added[i].sample_id) for i in fresh))
                return added
        self.live.refresh(gallery.name)
        return None

    def enrol_many(
        self, gallery_name: str, items: list[BulkItem], create_subjects: bool = False
    ) -> BulkEnrolment:
        """Bulk enrolment: samples of many subjects in one transaction, an outcome per item.

        Items are checked one by one (subject id, then the image or embedding); the good ones
        are committed together. Without `create_subjects` an item of an unknown subject is
        rejected with `subject_not_found`. An item repeating content that its subject has (or
        that an earlier item gave it) reports that sample as enrolled with `duplicate`.
        """
        if not items:
            raise ServiceError("no_input", "no items: send subject_id with an image or embedding")
        limit = self.settings.max_bulk_items
        if len(items) > limit:
            raise ServiceError(
                "too_many_items", f"{len(items)} items in one request; the limit is {limit}"
            )
        gallery = self.live.get(gallery_name)
        outcomes: list[BulkOutcome | None] = [None] * len(items)
        valid = []
        for position, item in enumerate(items):
            try:
                check_id(item.subject_id)
                valid.append(position)
            except ValueError as error:
                outcomes[position] = BulkOutcome(
                    item.subject_id, None, "rejected", f"subject id {error}", "invalid_id"
                )
        for _ in range(_ENROL_ATTEMPTS):
            active = gallery.active
            prepared = self.ingest.prepare(active.model, [items[i].upload for i in valid])
            usable = [(i, p) for i, p in zip(valid, prepared, strict=True) if p.vector is not None]
            committed = self._commit_many(gallery, active, items, usable, create_subjects)
            if committed is not None:
                break
        else:
            raise ServiceError("model_changed", "the gallery changed model; retry")
        for position, item in zip(valid, prepared, strict=True):
            if item.rejection is not None:
                outcomes[position] = BulkOutcome(
                    items[position].subject_id,
                    None,
                    "rejected",
                    str(item.rejection),
                    item.rejection_code,
                )
        for (position, _), added in zip(usable, committed, strict=True):
            subject_id = items[position].subject_id
            outcomes[position] = (
                BulkOutcome(
                    subject_id,
                    None,
                    "rejected",
                    f"subject {subject_id!r} does not exist (send create_subjects: true)",
                    "subject_not_found",
                )
                if added.subject_pk is None
                else BulkOutcome(
                    subject_id, added.sample_id, "enrolled", duplicate=not added.created
                )
            )
        done = [outcome for outcome in outcomes if outcome is not None]
        enrolled = sum(outcome.status == "enrolled" for outcome in done)
        self.metrics.observe_enrolment(gallery_name, enrolled, len(done) - enrolled)
        return BulkEnrolment(active.model.model_id, done)

    def _commit_many(
        self,
        gallery: LiveGallery,
        active: ActiveModel,
        items: list[BulkItem],
        usable: list[tuple[int, Prepared]],
        create_subjects: bool,
    ) -> list[BulkAdded] | None:
        """Commit the usable items in one transaction, then index the new samples; None if
        the gallery switched model meanwhile (nothing stored then)."""
        with gallery.lock, self.live.writing(gallery):
            if gallery.active is not active:
                return None
            if not usable:
                return []
            pairs = [
                (
                    items[position].subject_id,
                    NewSample(
                        content_sha256=item.content_sha256,
                        source=item.source,
                        embedding=item.vector,
                        image=item.image if gallery.record.keep_images else None,
                    ),
                )
                for position, item in usable
            ]
            try:
                with store_errors():
                    result = self.store.bulk_enrol(
                        gallery.name, active.model.model_id, pairs, create_subjects=create_subjects
                    )
            except StoreConflict:
                result = None  # another replica switched the gallery's model: caught up below
            if result is not None:
                return self._index_many(gallery, active, pairs, result)
        self.live.refresh(gallery.name)
        return None

    def _index_many(
        self,
        gallery: LiveGallery,
        active: ActiveModel,
        pairs: list[tuple[str, NewSample]],
        result: BulkEnrolled,
    ) -> list[BulkAdded]:
        """Index what a bulk enrolment committed. The caller holds the gallery's lock."""
        fresh = [i for i, added in enumerate(result.items) if added.created]
        if fresh:
            names = [pairs[i][0] for i in fresh]
            vectors = np.stack([pairs[i][1].embedding for i in fresh])
            active.index.add_many(
                np.array([result.items[i].subject_pk for i in fresh], dtype=np.int64),
                names,
                np.array([result.items[i].sample_id for i in fresh], dtype=np.int64),
                vectors,
            )
            active.calibration.samples_added_many(names, vectors)
            gallery.note_local(*(("add", result.items[i].sample_id) for i in fresh))
        return result.items

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
        with gallery.lock, store_errors(), self.live.writing(gallery):
            self.store.delete_sample(gallery_name, subject_id, sample_id)
            active = gallery.active
            active.index.remove_samples(np.array([sample_id], dtype=np.int64))
            active.calibration.samples_removed(subject_id)
            gallery.note_local(("remove", sample_id))

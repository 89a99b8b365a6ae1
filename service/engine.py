"""The recognition engine: galleries, enrolment, identify and verify over a store and indexes.

Routes are thin and call this. Every method is synchronous and CPU- or IO-bound: routes run
them in worker threads, never on the event loop.

Consistency: a gallery mutation commits to the store first, then applies the same change to the
in-memory index, both under the gallery's mutation lock, so the index always equals the
database after each operation and at restart the index is rebuilt from the database.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.calibrator import (
    Calibration,
    Calibrator,
    UnsupportedFPIR,
    check_fpir_supported,
    default_fpir,
)
from service.embedder import EmbeddingRejected, check_embedding
from service.errors import ApiError, not_found
from service.images import ImageRejected, check_not_blank, decode_base64, decode_image
from service.index.subjects import SubjectIndex
from service.metrics import Metrics
from service.registry import LoadedModel, ModelRegistry
from service.settings import Settings
from service.storage import (
    AddedSample,
    AlreadyExistsError,
    GalleryRecord,
    NewSample,
    NotFoundError,
    SampleRecord,
    Store,
    SubjectRecord,
)

logger = logging.getLogger("opengallery.service")

_ENROL_ATTEMPTS = 3


@dataclass(frozen=True)
class Upload:
    """One image or embedding from a request, before decoding.

    Exactly one of `image` (raw bytes), `image_base64` or `embedding` is set.
    """

    image: bytes | None = None
    image_base64: str | None = None
    embedding: list[float] | None = None
    name: str | None = None  # the multipart filename, for messages


@dataclass(frozen=True)
class Prepared:
    """An upload decoded and embedded, or the reason it was rejected."""

    vector: np.ndarray | None = None
    image: bytes | None = None
    content_sha256: str = ""
    source: str = "image"
    rejection: ImageRejected | EmbeddingRejected | None = None


@dataclass(frozen=True)
class ActiveModel:
    """The model a gallery answers with and its index: swapped as one (issue 5 migration)."""

    model: LoadedModel
    index: SubjectIndex


@dataclass
class GalleryRuntime:
    record: GalleryRecord
    active: ActiveModel
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class SampleOutcome:
    sample_id: int | None
    status: str  # "enrolled" | "rejected"
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class IdentifyResult:
    decision: str
    subject_id: str | None
    score: float | None
    threshold: float | None
    fpir: float
    candidates: list[tuple[str, float]]


class GalleryEngine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        models: ModelRegistry,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.metrics = metrics or Metrics()
        self.calibrator = Calibrator()
        self._galleries: dict[str, GalleryRuntime] = {}
        self._galleries_lock = threading.Lock()
        self.metrics.gallery_sizes = self.gallery_sizes

    # -- start-up --
    def build_indexes(self) -> None:
        """Build every gallery's index from the database (the source of truth)."""
        for record in self.store.list_galleries():
            model = self.models.get(record.model_id)
            if model is None:
                logger.error(
                    "gallery %r uses model %s, which is not loaded: it is unavailable until "
                    "that bundle is registered",
                    record.name,
                    record.model_id,
                )
                continue
            runtime = GalleryRuntime(record, ActiveModel(model, self._build_index(record, model)))
            with self._galleries_lock:
                self._galleries[record.name] = runtime
            logger.info(
                "gallery %r: %d subjects, %d samples indexed with %s",
                record.name,
                runtime.active.index.subject_count,
                runtime.active.index.sample_count,
                model.model_id,
            )

    def _build_index(self, record: GalleryRecord, model: LoadedModel) -> SubjectIndex:
        stored = self.store.load_embeddings(record.name, model.model_id)
        if stored.vectors.size and stored.vectors.shape[1] != model.dim:
            raise RuntimeError(
                f"gallery {record.name!r}: stored embeddings have dimension "
                f"{stored.vectors.shape[1]}, model {model.model_id} has {model.dim}"
            )
        return SubjectIndex.build(
            model.dim,
            record.scoring,
            stored.sample_ids,
            stored.subject_pks,
            stored.vectors.reshape(-1, model.dim) if stored.vectors.size else stored.vectors,
            stored.subjects,
            stored.version,
        )

    def gallery_sizes(self) -> dict[str, tuple[int, int]]:
        with self._galleries_lock:
            runtimes = list(self._galleries.values())
        return {
            runtime.record.name: (
                runtime.active.index.subject_count,
                runtime.active.index.sample_count,
            )
            for runtime in runtimes
        }

    def _runtime(self, gallery: str) -> GalleryRuntime:
        with self._galleries_lock:
            runtime = self._galleries.get(gallery)
        if runtime is None:
            if self.store.get_gallery(gallery) is not None:
                raise ApiError(
                    409,
                    "model_unavailable",
                    f"gallery {gallery!r} exists but its model is not loaded",
                )
            raise not_found("gallery", gallery)
        return runtime

    # -- galleries --
    def create_gallery(
        self,
        name: str,
        model_id: str | None,
        fpir: float | None,
        scoring: str,
        keep_images: bool | None,
    ) -> GalleryRecord:
        model_id = model_id or self.models.default_model_id
        model = self.models.get(model_id) if model_id else None
        if model is None:
            known = ", ".join(m.model_id for m in self.models.all()) or "none"
            raise ApiError(
                422, "unknown_model", f"model {model_id!r} is not registered (registered: {known})"
            )
        if fpir is None:
            fpir = default_fpir(self.settings.default_fpir, len(model.calibration))
        try:
            check_fpir_supported(fpir, len(model.calibration))
        except UnsupportedFPIR as error:
            raise ApiError(422, "unsupported_fpir", str(error)) from None
        keep = self.settings.keep_images if keep_images is None else keep_images
        with self._galleries_lock:
            try:
                record = self.store.create_gallery(name, model.model_id, fpir, scoring, keep)
            except AlreadyExistsError:
                raise ApiError(409, "already_exists", f"gallery {name!r} already exists") from None
            index = SubjectIndex(model.dim, scoring)
            index.version = record.version
            self._galleries[name] = GalleryRuntime(record, ActiveModel(model, index))
        return record

    def get_gallery(self, name: str) -> GalleryRecord:
        record = self.store.get_gallery(name)
        if record is None:
            raise not_found("gallery", name)
        return record

    def list_galleries(self) -> list[GalleryRecord]:
        return self.store.list_galleries()

    def delete_gallery(self, name: str) -> None:
        with self._galleries_lock:
            runtime = self._galleries.get(name)
        lock = runtime.lock if runtime else threading.Lock()
        with lock:
            if not self.store.delete_gallery(name):
                raise not_found("gallery", name)
            with self._galleries_lock:
                self._galleries.pop(name, None)
            self.calibrator.forget(name)

    # -- subjects --
    def put_subject(
        self, gallery: str, subject_id: str, metadata: dict[str, Any] | None
    ) -> tuple[SubjectRecord, bool]:
        runtime = self._runtime(gallery)
        with runtime.lock:
            try:
                record, created, version = self.store.put_subject(gallery, subject_id, metadata)
            except NotFoundError as error:
                raise not_found(error.what, error.name) from None
            runtime.active.index.set_subject(record.pk, subject_id, version)
        return record, created

    def get_subject(
        self, gallery: str, subject_id: str
    ) -> tuple[SubjectRecord, list[SampleRecord]]:
        if self.store.get_gallery(gallery) is None:
            raise not_found("gallery", gallery)
        try:
            record = self.store.get_subject(gallery, subject_id)
            if record is None:
                raise not_found("subject", subject_id)
            return record, self.store.list_samples(gallery, subject_id)
        except NotFoundError as error:
            raise not_found(error.what, error.name) from None

    def list_subjects(self, gallery: str, limit: int, after: str | None) -> list[SubjectRecord]:
        try:
            return self.store.list_subjects(gallery, limit, after)
        except NotFoundError as error:
            raise not_found(error.what, error.name) from None

    def delete_subject(self, gallery: str, subject_id: str) -> None:
        runtime = self._runtime(gallery)
        with runtime.lock:
            try:
                pk, sample_ids, version = self.store.delete_subject(gallery, subject_id)
            except NotFoundError as error:
                raise not_found(error.what, error.name) from None
            runtime.active.index.remove_subject(pk, np.array(sample_ids, dtype=np.int64), version)

    # -- samples --
    def prepare(self, model: LoadedModel, uploads: list[Upload]) -> list[Prepared]:
        """Decode and embed uploads; each becomes a vector or a rejection with its reason."""
        prepared: list[Prepared | None] = [None] * len(uploads)
        images = []
        image_slots: list[tuple[int, bytes, str]] = []
        for slot, upload in enumerate(uploads):
            try:
                if upload.embedding is not None:
                    vector = check_embedding(upload.embedding, model.dim)
                    raw = np.asarray(upload.embedding, dtype=np.float32).tobytes()
                    prepared[slot] = Prepared(
                        vector=vector,
                        content_sha256=hashlib.sha256(raw).hexdigest(),
                        source="embedding",
                    )
                    continue
                data = (
                    upload.image
                    if upload.image is not None
                    else decode_base64(upload.image_base64 or "")
                )
                image = decode_image(
                    data,
                    max_bytes=self.settings.max_image_bytes,
                    max_pixels=self.settings.max_image_pixels,
                )
                check_not_blank(image, model.bundle.manifest.input.color)
                images.append(image)
                image_slots.append((slot, data, hashlib.sha256(data).hexdigest()))
            except (ImageRejected, EmbeddingRejected) as rejection:
                prepared[slot] = Prepared(rejection=rejection)
        if images:
            try:
                vectors = model.embedder.embed_images(images)
            except EmbeddingRejected:
                # One bad output must not sink the batch: embed one by one to find it.
                vectors = None
            for position, (slot, data, digest) in enumerate(image_slots):
                try:
                    vector = (
                        vectors[position]
                        if vectors is not None
                        else model.embedder.embed_images([images[position]])[0]
                    )
                    prepared[slot] = Prepared(vector=vector, image=data, content_sha256=digest)
                except EmbeddingRejected as rejection:
                    prepared[slot] = Prepared(rejection=rejection)
        return [item for item in prepared if item is not None]

    def _commit_samples(
        self,
        runtime: GalleryRuntime,
        active: ActiveModel,
        subject_id: str,
        new_samples: list[NewSample],
    ) -> list[AddedSample] | None:
        """Commit samples embedded by `active`, then index them; None if the gallery switched
        to another model meanwhile (nothing is stored then)."""
        with runtime.lock:
            if runtime.active is not active:
                return None
            try:
                record, added, version = self.store.add_samples(
                    runtime.record.name, subject_id, active.model.model_id, new_samples
                )
            except NotFoundError as error:
                raise not_found(error.what, error.name) from None
            fresh = [i for i, item in enumerate(added) if item.created]
            if fresh:
                active.index.add_samples(
                    record.pk,
                    subject_id,
                    np.array([added[i].sample_id for i in fresh], dtype=np.int64),
                    np.stack([new_samples[i].embedding for i in fresh]),
                    version,
                )
            return added

    def enrol(
        self, gallery: str, subject_id: str, uploads: list[Upload]
    ) -> tuple[str, list[SampleOutcome]]:
        """Enrol uploads; returns the model that embedded them and one outcome per upload."""
        self._check_count(uploads, "samples")
        runtime = self._runtime(gallery)
        # A migration may switch the gallery's model between embedding and committing: then
        # embed again with the new model (a switch is rare, so a few attempts suffice).
        for _ in range(_ENROL_ATTEMPTS):
            active = runtime.active
            prepared = self.prepare(active.model, uploads)
            new_samples = [
                NewSample(
                    content_sha256=item.content_sha256,
                    source=item.source,
                    embedding=item.vector,
                    image=item.image if runtime.record.keep_images else None,
                )
                for item in prepared
                if item.vector is not None
            ]
            if not new_samples:
                added: list[AddedSample] | None = []
                break
            added = self._commit_samples(runtime, active, subject_id, new_samples)
            if added is not None:
                break
        if added is None:
            raise ApiError(409, "model_changed", "the gallery changed model; retry")
        if not new_samples and self.store.get_subject(gallery, subject_id) is None:
            raise not_found("subject", subject_id)
        outcomes: list[SampleOutcome] = []
        added_iter = iter(added)
        for item in prepared:
            if item.rejection is not None:
                code = getattr(item.rejection, "code", "invalid_embedding")
                outcomes.append(
                    SampleOutcome(None, "rejected", reason=str(item.rejection), code=code)
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
        self.metrics.observe_enrolment(gallery, enrolled, len(outcomes) - enrolled)
        return active.model.model_id, outcomes

    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> None:
        runtime = self._runtime(gallery)
        with runtime.lock:
            try:
                _, version = self.store.delete_sample(gallery, subject_id, sample_id)
            except NotFoundError as error:
                raise not_found(error.what, error.name) from None
            runtime.active.index.remove_samples(np.array([sample_id], dtype=np.int64), version)

    # -- recognition --
    def _check_count(self, uploads: list[Upload], what: str) -> None:
        if not uploads:
            raise ApiError(422, "no_input", f"no {what}: send images or embeddings")
        limit = self.settings.max_items_per_request
        if len(uploads) > limit:
            raise ApiError(
                413, "too_many_items", f"{len(uploads)} {what} in one request; the limit is {limit}"
            )

    def _probe_vectors(self, model: LoadedModel, uploads: list[Upload]) -> np.ndarray:
        prepared = self.prepare(model, uploads)
        for number, item in enumerate(prepared):
            if item.rejection is not None:
                too_large = isinstance(item.rejection, ImageRejected) and item.rejection.too_large
                code = getattr(item.rejection, "code", "invalid_embedding")
                raise ApiError(413 if too_large else 422, code, f"probe {number}: {item.rejection}")
        return np.stack([item.vector for item in prepared if item.vector is not None])

    def _calibration(
        self,
        runtime: GalleryRuntime,
        active: ActiveModel,
        fpir: float | None,
        threshold: float | None,
    ) -> Calibration:
        if fpir is not None and threshold is not None:
            raise ApiError(422, "validation_error", "give either fpir or threshold, not both")
        name = runtime.record.name
        model = active.model
        if threshold is not None:
            return self.calibrator.for_threshold(
                name, model.model_id, active.index, model.calibration, threshold
            )
        try:
            return self.calibrator.for_fpir(
                name,
                model.model_id,
                active.index,
                model.calibration,
                runtime.record.fpir if fpir is None else fpir,
            )
        except UnsupportedFPIR as error:
            raise ApiError(422, "unsupported_fpir", str(error)) from None

    def identify(
        self,
        gallery: str,
        uploads: list[Upload],
        top_k: int,
        fpir: float | None,
        threshold: float | None,
    ) -> tuple[str, list[IdentifyResult]]:
        self._check_count(uploads, "probes")
        if not 1 <= top_k <= self.settings.max_top_k:
            raise ApiError(
                422, "invalid_top_k", f"top_k must be 1-{self.settings.max_top_k}, got {top_k}"
            )
        runtime = self._runtime(gallery)
        active = runtime.active
        vectors = self._probe_vectors(active.model, uploads)
        calibration = self._calibration(runtime, active, fpir, threshold)
        results = []
        for candidates in active.index.search(vectors, top_k):
            top = candidates[0] if candidates else None
            known = (
                top is not None
                and calibration.threshold is not None
                and top[1] >= calibration.threshold
            )
            results.append(
                IdentifyResult(
                    decision="known" if known else "unknown",
                    subject_id=top[0] if known and top else None,
                    score=top[1] if top else None,
                    threshold=calibration.threshold,
                    fpir=calibration.fpir,
                    candidates=candidates,
                )
            )
        known_count = sum(result.decision == "known" for result in results)
        self.metrics.observe_decisions(gallery, known_count, len(results) - known_count)
        return active.model.model_id, results

    def verify(
        self,
        gallery: str,
        subject_id: str,
        upload: Upload,
        fpir: float | None,
        threshold: float | None,
    ) -> tuple[str, bool, float, float | None, float]:
        runtime = self._runtime(gallery)
        active = runtime.active
        if self.store.get_subject(gallery, subject_id) is None:
            raise not_found("subject", subject_id)
        vector = self._probe_vectors(active.model, [upload])
        scores = active.index.subject_scores(vector, subject_id)
        if scores is None:
            raise ApiError(
                409,
                "no_samples",
                f"subject {subject_id!r} has no enrolled samples to verify against",
            )
        calibration = self._calibration(runtime, active, fpir, threshold)
        score = float(scores[0])
        match = calibration.threshold is not None and score >= calibration.threshold
        return active.model.model_id, match, score, calibration.threshold, calibration.fpir

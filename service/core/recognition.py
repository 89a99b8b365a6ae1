"""Recognition: identify (1:N) and verify (1:1), one decision rule for both.

Requests are validated before any probe is decoded or embedded: a bad `top_k`, `fpir` or
`threshold` costs nothing. The threshold for an FPIR is calibrated against the gallery as it
is now (service/core/calibration.py); the decision is `models.scoring.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.scoring import decide
from service.core.calibration import Calibration, check_fpir_supported
from service.core.errors import ServiceError, invalid, not_found, store_errors
from service.core.ingest import Ingest, Upload
from service.core.live import ActiveModel, LiveGalleries, LiveGallery
from service.core.metrics import Metrics
from service.index import Candidate
from service.settings import Settings
from service.storage import Store


@dataclass(frozen=True)
class IdentifyResult:
    decision: str  # "known" | "unknown"
    subject_id: str | None
    score: float | None  # the top candidate's; None for an empty gallery
    threshold: float | None
    fpir: float
    fpir_upper: float  # 95% upper confidence bound on the FPIR the threshold realises
    candidates: list[Candidate]


@dataclass(frozen=True)
class Identification:
    model_id: str
    results: list[IdentifyResult]


@dataclass(frozen=True)
class Verification:
    model_id: str
    subject_id: str
    match: bool
    score: float
    threshold: float | None
    fpir: float
    fpir_upper: float


class Recognition:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        live: LiveGalleries,
        ingest: Ingest,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.live = live
        self.ingest = ingest
        self.metrics = metrics

    def identify(
        self,
        gallery_name: str,
        uploads: list[Upload],
        top_k: int = 5,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Identification:
        self.ingest.check_count(uploads, "probes")
        if not 1 <= top_k <= self.settings.max_top_k:
            raise ServiceError(
                "invalid_top_k", f"top_k must be 1-{self.settings.max_top_k}, got {top_k}"
            )
        gallery = self.live.get(gallery_name)
        active = gallery.active
        self._check_operating_point(gallery, active, fpir, threshold)
        vectors = self.ingest.probe_vectors(active.model, uploads)
        calibration = self._calibration(gallery, active, fpir, threshold)
        results = []
        for candidates in active.index.search(vectors, top_k):
            top = candidates[0] if candidates else None
            known = (
                top is not None
                and calibration.threshold is not None
                and decide(top.score, calibration.threshold)
            )
            results.append(
                IdentifyResult(
                    decision="known" if known else "unknown",
                    subject_id=top.subject_id if known and top else None,
                    score=top.score if top else None,
                    threshold=calibration.threshold,
                    fpir=calibration.fpir,
                    fpir_upper=calibration.fpir_upper,
                    candidates=candidates,
                )
            )
        known_count = sum(result.decision == "known" for result in results)
        self.metrics.observe_decisions(gallery_name, known_count, len(results) - known_count)
        return Identification(active.model.model_id, results)

    def verify(
        self,
        gallery_name: str,
        subject_id: str,
        upload: Upload,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Verification:
        gallery = self.live.get(gallery_name)
        active = gallery.active
        self._check_operating_point(gallery, active, fpir, threshold)
        with store_errors():
            if self.store.get_subject(gallery_name, subject_id) is None:
                raise not_found("subject", subject_id)
        vector = self.ingest.probe_vectors(active.model, [upload])
        scores = active.index.subject_scores(vector, subject_id)
        if scores is None:
            raise ServiceError(
                "no_samples", f"subject {subject_id!r} has no enrolled samples to verify against"
            )
        calibration = self._calibration(gallery, active, fpir, threshold)
        score = float(scores[0])
        match = calibration.threshold is not None and decide(score, calibration.threshold)
        return Verification(
            active.model.model_id,
            subject_id,
            match,
            score,
            calibration.threshold,
            calibration.fpir,
            calibration.fpir_upper,
        )

    @staticmethod
    def _check_operating_point(
        gallery: LiveGallery, active: ActiveModel, fpir: float | None, threshold: float | None
    ) -> None:
        if fpir is not None and threshold is not None:
            raise invalid("give either fpir or threshold, not both")
        if threshold is None:
            kept = active.calibration.kept
            check_fpir_supported(
                gallery.record.fpir if fpir is None else fpir,
                kept.size,
                "the model's calibration set"
                if kept.source == "bundle"
                else f"gallery {gallery.name!r}'s own calibration set",
            )

    def _calibration(
        self,
        gallery: LiveGallery,
        active: ActiveModel,
        fpir: float | None,
        threshold: float | None,
    ) -> Calibration:
        if threshold is not None:
            return active.calibration.for_threshold(threshold)
        return active.calibration.for_fpir(gallery.record.fpir if fpir is None else fpir)

"""A gallery's own calibration set: non-mated probes from the deployment, supplied by an operator.

The bundle's calibration set holds the strangers the model was trained against; a deployment's
strangers can look different, and then the bundle's thresholds do not hold there. An operator
uploads probes of people who are *not* enrolled (same body forms as enrolment); they are stored
in the database, embedded by the gallery's model, and re-embedded when the gallery migrates.

When the set takes effect: a gallery answers at its default FPIR, which needs at least 10/fpir
searches. A set that small would be worse than the bundle's, so the gallery's own set replaces
the bundle's only once it holds that many probes; until then it grows in the database (`GET`
reports `gallery_set_size` and `needed`) and the bundle's set answers. From then on it stays in
effect (uploads only add to it); `DELETE` goes back to the bundle's set, and is refused when the
bundle's set is too small for the gallery's FPIR (after a migration to a model with a smaller
set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.calibration import min_searches_for_fpir
from service.core.calibration import STANDARD_FPIRS, Calibration
from service.core.errors import ServiceError, store_errors
from service.core.ingest import Ingest, Upload
from service.core.live import ActiveModel, LiveGalleries, LiveGallery
from service.settings import Settings
from service.storage import CalibrationSampleRecord, NewSample, Store, StoreConflict

_UPLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class ProbeOutcome:
    status: str  # "accepted" | "rejected"
    reason: str | None = None
    code: str | None = None
    content_sha256: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class CalibrationSummary:
    source: str  # "gallery" | "bundle": the set the thresholds come from
    size: int  # non-mated searches in that set
    min_fpir: float  # the smallest FPIR it supports (10 / size)
    fpir: float  # the gallery's default FPIR
    gallery_set_size: int  # probes in the gallery's own set (in effect or not yet)
    needed: int  # searches the gallery's FPIR needs: its own set takes effect from this size
    thresholds: list[Calibration]  # the standard FPIRs and the gallery's, where supported
    # Each probe's best score against the gallery, descending (when asked for); probes with
    # no best subject (an empty gallery) have none.
    scores: list[float] | None = None

    @property
    def default(self) -> Calibration | None:
        return next((point for point in self.thresholds if point.fpir == self.fpir), None)


@dataclass(frozen=True)
class CalibrationUpload:
    model_id: str  # the model that embedded the probes
    outcomes: list[ProbeOutcome]  # one per upload, in order
    summary: CalibrationSummary


@dataclass(frozen=True)
class ProbePage:
    samples: list[CalibrationSampleRecord]
    last: int | None  # the sample id to continue after; None on the last page


class CalibrationSets:
    def __init__(
        self, settings: Settings, store: Store, live: LiveGalleries, ingest: Ingest
    ) -> None:
        self.settings = settings
        self.store = store
        self.live = live
        self.ingest = ingest

    def add(self, gallery_name: str, uploads: list[Upload]) -> CalibrationUpload:
        """Add non-mated probes: one outcome per upload, accepted probes committed on return."""
        self.ingest.check_count(uploads, "calibration samples")
        gallery = self.live.get(gallery_name)
        # As enrolment: a migration may switch the model between embedding and committing.
        for _ in range(_UPLOAD_ATTEMPTS):
            active = gallery.active
            prepared = self.ingest.prepare(active.model, uploads)
            new = [
                NewSample(
                    content_sha256=item.content_sha256,
                    source=item.source,
                    embedding=item.vector,
                    image=item.image if gallery.record.keep_images else None,
                )
                for item in prepared
                if item.vector is not None
            ]
            with gallery.lock:
                if gallery.active is not active:
                    continue
                try:
                    with store_errors():
                        added, size = (
                            self.store.add_calibration_samples(
                                gallery.name, active.model.model_id, new
                            )
                            if new
                            else ([], self.store.count_calibration_samples(gallery.name)[0])
                        )
                except StoreConflict:
                    stale = True  # another replica switched the gallery's model
                else:
                    stale = False
                    fresh = [new[i].embedding for i, item in enumerate(added) if item.created]
                    self._follow(gallery, active, fresh, size)
                    if fresh:
                        gallery.note_local(("calibration",))
            if stale:
                self.live.refresh(gallery.name)
                continue
            break
        else:
            raise ServiceError("model_changed", "the gallery changed model; retry")
        outcomes: list[ProbeOutcome] = []
        added_iter = iter(added)
        for item in prepared:
            if item.rejection is not None:
                outcomes.append(ProbeOutcome("rejected", str(item.rejection), item.rejection_code))
            else:
                outcomes.append(
                    ProbeOutcome(
                        "accepted",
                        content_sha256=item.content_sha256,
                        duplicate=not next(added_iter).created,
                    )
                )
        return CalibrationUpload(active.model.model_id, outcomes, self.describe(gallery_name))

    def _follow(
        self, gallery: LiveGallery, active: ActiveModel, fresh: list[np.ndarray], size: int
    ) -> None:
        """The caller holds the gallery's lock and has committed `fresh` probes."""
        calibration = active.calibration
        if calibration.source == "gallery":
            if fresh:
                calibration.probes_added(np.stack(fresh))
        elif size >= min_searches_for_fpir(gallery.record.fpir):
            probes, source = self.live.calibration_set(gallery.record, active.model)
            calibration.replace_probes(probes, source)

    def describe(self, gallery_name: str, with_scores: bool = False) -> CalibrationSummary:
        """The calibration the gallery answers with; `with_scores` adds the kept best score of
        every probe of the set in effect, from the same state as the thresholds."""
        gallery = self.live.get(gallery_name)
        calibration = gallery.active.calibration
        fpir = gallery.record.fpir
        with store_errors():
            stored, _ = self.store.count_calibration_samples(gallery_name)
        kept = calibration.kept  # one state: source, size and thresholds agree
        thresholds = calibration.operating_points((*STANDARD_FPIRS, fpir), kept)
        size = kept.size
        scores = None
        if with_scores:
            finite = kept.scores[np.isfinite(kept.scores)]
            scores = [float(score) for score in np.sort(finite)[::-1]]
        return CalibrationSummary(
            source=kept.source,
            size=size,
            min_fpir=min(1.0, 10.0 / size),
            fpir=fpir,
            gallery_set_size=stored,
            needed=min_searches_for_fpir(fpir),
            thresholds=thresholds,
            scores=scores,
        )

    def list_samples(self, gallery_name: str, limit: int, after: int) -> ProbePage:
        """Up to `limit` probes of the gallery's own set, by id, after sample id `after`."""
        if not 1 <= limit <= self.settings.max_page_size:
            raise ServiceError(
                "invalid_limit", f"limit must be 1-{self.settings.max_page_size}, got {limit}"
            )
        with store_errors():
            records = self.store.list_calibration_samples(gallery_name, after, limit + 1)
        page = records[:limit]
        return ProbePage(page, page[-1].sample_id if len(records) > limit else None)

    def describe_if_loaded(self, gallery_name: str) -> CalibrationSummary | None:
        """As `describe`, or None for a gallery whose model is not loaded."""
        if self.live.find(gallery_name) is None:
            return None
        return self.describe(gallery_name)

    def clear(self, gallery_name: str) -> CalibrationSummary:
        """Delete the gallery's own set: back to the bundle's, if that supports the gallery's
        FPIR (ServiceError `calibration_required` otherwise, and nothing is deleted)."""
        gallery = self.live.get(gallery_name)
        with gallery.lock:
            active = gallery.active
            fpir = gallery.record.fpir
            needed = min_searches_for_fpir(fpir)
            bundle = len(active.model.calibration)
            if active.calibration.source == "gallery" and bundle < needed:
                raise ServiceError(
                    "calibration_required",
                    f"gallery {gallery_name!r} answers at fpir {fpir} by default, which needs at "
                    f"least {needed} non-mated calibration searches (10/fpir); the calibration "
                    f"set of {active.model.model_id} has {bundle}, so the gallery's own set "
                    f"({active.calibration.size}) cannot be deleted",
                )
            with store_errors():
                cleared = self.store.clear_calibration(gallery_name)
            if active.calibration.source == "gallery":
                active.calibration.replace_probes(active.model.calibration, "bundle")
            if cleared:
                gallery.note_local(("calibration",))
        return self.describe(gallery_name)

"""Per-gallery thresholds from a calibration set, kept current as the gallery changes.

Every calibration embedding is a non-mated probe: its top-1 score against the gallery (the
same scoring rule as identify) is what an unknown person would score. FPIR at a fixed threshold
grows with the gallery, so the threshold must follow the gallery. Instead of searching the
whole calibration set again after every write, `GalleryCalibration` keeps, for each probe, its
best score and the subject that gives it, and updates them with each write:

- samples added to subject s, "max" scoring: a probe's best becomes max(old, probe · new
  vectors), one product of the calibration set with the new vectors;
- s's template moved ("mean" scoring: samples added or removed): the probes whose best subject
  is s are searched again (top-1), the others take max(old, probe · s's new template);
- samples removed ("max") or subject s deleted: only the probes whose best subject is s are
  searched again; every other probe's best is untouched.

Thresholds per FPIR then follow from the kept scores by `models.calibration.threshold_for_fpir`,
each with `fpir_upper` (`models.calibration.fpir_upper_bound`). Updates run under the gallery's
mutation lock right after the index changed; readers take one immutable snapshot and never wait.

The kept scores travel with the index snapshot (`GalleryCalibration.saved`): a restart that
loads the index at the database's version, for the same calibration set, takes them instead of
searching every probe again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from models.calibration import (
    CalibrationError,
    fpir_upper_bound,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)
from service.core.errors import ServiceError
from service.index import SubjectSearch

STANDARD_FPIRS = (0.001, 0.01, 0.1)


class UnsupportedFPIR(ServiceError):
    """An FPIR the calibration set cannot support (too few non-mated searches)."""

    def __init__(self, message: str) -> None:
        super().__init__("unsupported_fpir", message)


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None for an empty gallery: nothing can match
    fpir: float  # the requested FPIR, or the estimated one for an explicit threshold
    # One-sided 95% Clopper-Pearson upper bound on the FPIR the threshold realises for
    # strangers like the calibration set (0 for an empty gallery: nothing is accepted).
    fpir_upper: float


def check_fpir_supported(
    fpir: float, num_searches: int, what: str = "the model's calibration set"
) -> None:
    if not 0.0 < fpir <= 1.0:
        raise UnsupportedFPIR(f"fpir must be in (0, 1], got {fpir}")
    if 10.0 / fpir > 2.0**53:  # a subnormal fpir: 10 / fpir is no count (or infinite)
        raise UnsupportedFPIR(
            f"fpir {fpir} is too small to calibrate: choose fpir >= "
            f"{10.0 / max(num_searches, 1):.6g} or pass an explicit threshold"
        )
    needed = min_searches_for_fpir(fpir)
    if num_searches < needed:
        raise UnsupportedFPIR(
            f"fpir {fpir} needs at least {needed} non-mated calibration searches (10/fpir); "
            f"{what} has {num_searches}: choose fpir >= "
            f"{10.0 / num_searches:.6g} or pass an explicit threshold"
        )


def default_fpir(configured: float, num_searches: int) -> float:
    """The FPIR a gallery gets when its creator names none: the configured default, raised to
    the smallest FPIR the model's calibration set supports (10 / M) when it is too small to
    calibrate the default. An FPIR asked for explicitly is never raised: it is refused."""
    if num_searches >= min_searches_for_fpir(configured):
        return configured
    return min(1.0, 10.0 / num_searches)


@dataclass(frozen=True)
class KeptScores:
    """One consistent state of a calibration set against the gallery (never mutated, except
    for the cache of operating points, which only ever holds values computed from it)."""

    source: str  # "gallery" (the operator's own strangers) or "bundle" (the model's)
    probes: np.ndarray  # float32 [M, D], L2-normalised non-mated embeddings
    scores: np.ndarray  # float32 [M]: each probe's best subject score; -inf if no samples
    subjects: np.ndarray  # object [M]: the subject_id giving it; None if no samples
    points: dict[float, Calibration] = field(default_factory=dict)  # fpir -> its threshold

    @property
    def size(self) -> int:
        return len(self.probes)

    @property
    def gallery_empty(self) -> bool:
        return bool(np.isneginf(self.scores).all())


class GalleryCalibration:
    """A calibration set's best scores against one index, updated with every write to it.

    Mutating methods are called by the holder of the gallery's mutation lock, right after the
    same change was applied to `index`; each publishes a new `KeptScores` in one assignment.
    """

    _MAX_POINTS = 64  # cached operating points per state: FPIRs asked for explicitly

    def __init__(
        self,
        index: SubjectSearch,
        probes: np.ndarray,
        source: str,
        warm_fpir: float | None = None,
        saved: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """`saved`: what `saved()` returned for this very index (saved with its snapshot),
        used when it was saved for the same probes; otherwise every probe is searched."""
        self.index = index
        self.warm_fpir = warm_fpir  # computed after every change, so no request computes it
        probes = np.ascontiguousarray(probes, dtype=np.float32)
        restored = _restore(saved, probes, source) if saved else None
        self._kept = restored or self._search_all(probes, source)
        self._warm()

    # -- reading --
    @property
    def kept(self) -> KeptScores:
        return self._kept

    @property
    def source(self) -> str:
        return self._kept.source

    @property
    def size(self) -> int:
        return self._kept.size

    def for_fpir(self, fpir: float) -> Calibration:
        return self._point(self._kept, fpir)

    def saved(self) -> dict[str, np.ndarray]:
        """The kept scores as arrays to save with the index they were kept against, named by
        a fingerprint of the probes (and their source) they belong to."""
        kept = self._kept
        subjects = json.dumps(kept.subjects.tolist()).encode()  # any subject id, and None
        return {
            "calibration_probes": np.array(_fingerprint(kept.probes, kept.source)),
            "calibration_scores": kept.scores,
            "calibration_subjects": np.frombuffer(subjects, dtype=np.uint8),
        }

    def _point(self, kept: KeptScores, fpir: float) -> Calibration:
        check_fpir_supported(fpir, kept.size, _describe(kept))
        point = kept.points.get(fpir)
        if point is not None:
            return point
        if kept.gallery_empty:
            point = Calibration(threshold=None, fpir=fpir, fpir_upper=0.0)
        else:
            try:
                threshold = threshold_for_fpir(kept.scores, fpir)
            except CalibrationError as error:
                raise UnsupportedFPIR(str(error)) from None
            point = Calibration(threshold, fpir, _upper(kept, threshold))
        if len(kept.points) >= self._MAX_POINTS:
            kept.points.clear()
        kept.points[fpir] = point
        return point

    def for_threshold(self, threshold: float) -> Calibration:
        """An explicit threshold: the FPIR it gives on the calibration set, and its bound."""
        kept = self._kept
        if kept.gallery_empty:
            return Calibration(threshold=threshold, fpir=0.0, fpir_upper=0.0)
        return Calibration(
            threshold, realised_fpir(kept.scores, threshold), _upper(kept, threshold)
        )

    def operating_points(
        self, fpirs: tuple[float, ...], kept: KeptScores | None = None
    ) -> list[Calibration]:
        """The thresholds of the FPIRs (sorted, distinct) that the set supports, all from one
        state of it (`kept`, default the current one)."""
        kept = kept or self._kept
        return [
            self._point(kept, fpir)
            for fpir in sorted(set(fpirs))
            if kept.size >= min_searches_for_fpir(fpir)
        ]

    # -- following the index (the caller holds the gallery's lock) --
    def samples_added(self, subject_id: str, vectors: np.ndarray) -> None:
        """`vectors` (L2-normalised) were just added to `subject_id` in the index."""
        if self.index.scoring == "mean":
            self._template_moved(subject_id)
            return
        kept = self._kept
        new = exact_scores(kept.probes, vectors)
        better = new > kept.scores
        if better.any():
            self._publish(
                kept,
                np.where(better, new, kept.scores),
                np.where(better, subject_id, kept.subjects),
            )

    def samples_added_many(self, subject_ids: list[str], vectors: np.ndarray) -> None:
        """Bulk enrolment: `vectors[i]` was just added to `subject_ids[i]` in the index. One
        product of the calibration set with all of them, as if added subject by subject."""
        kept = self._kept
        if self.index.scoring == "mean":
            touched = list(dict.fromkeys(subject_ids))
            templates = [self.index.subject_vectors(subject_id) for subject_id in touched]
            was_best = np.isin(kept.subjects, np.array(touched, dtype=object))
            scores, subjects = kept.scores.copy(), kept.subjects.copy()
            others = np.flatnonzero(~was_best)
            if len(others):
                products = (
                    np.asarray(kept.probes[others], dtype=np.float64)
                    @ np.vstack([np.asarray(t, dtype=np.float64) for t in templates]).T
                )
                owners = np.concatenate(
                    [np.full(len(t), number) for number, t in enumerate(templates)]
                )
                best = products.argmax(axis=1)
                new = products[np.arange(len(others)), best].astype(np.float32)
                better = new > scores[others]
                scores[others[better]] = new[better]
                subjects[others[better]] = np.array(touched, dtype=object)[owners[best[better]]]
            self._search_into(kept, scores, subjects, np.flatnonzero(was_best))
            return
        products = (
            np.asarray(kept.probes, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
        )
        best = products.argmax(axis=1)
        new = products[np.arange(len(best)), best].astype(np.float32)
        better = new > kept.scores
        if better.any():
            names = np.array(subject_ids, dtype=object)
            self._publish(
                kept,
                np.where(better, new, kept.scores),
                np.where(better, names[best], kept.subjects),
            )

    def samples_removed(self, subject_id: str) -> None:
        """Samples of `subject_id` were just removed from the index."""
        if self.index.scoring == "mean":
            self._template_moved(subject_id)
        else:
            self._search_again(self._kept.subjects == subject_id)

    def subject_removed(self, subject_id: str) -> None:
        """`subject_id` and its samples were just removed from the index."""
        self._search_again(self._kept.subjects == subject_id)

    def probes_added(self, probes: np.ndarray) -> None:
        """More non-mated probes for the same set: only they are searched."""
        kept = self._kept
        fresh = self._search_all(np.ascontiguousarray(probes, dtype=np.float32), kept.source)
        self._kept = KeptScores(
            kept.source,
            np.concatenate([kept.probes, fresh.probes]),
            np.concatenate([kept.scores, fresh.scores]),
            np.concatenate([kept.subjects, fresh.subjects]),
        )
        self._warm()

    def replace_probes(self, probes: np.ndarray, source: str) -> None:
        """Another calibration set (the gallery's own, or back to the bundle's)."""
        self._kept = self._search_all(np.ascontiguousarray(probes, dtype=np.float32), source)
        self._warm()

    # -- internals --
    def _template_moved(self, subject_id: str) -> None:
        kept = self._kept
        was_best = kept.subjects == subject_id
        scores, subjects = kept.scores.copy(), kept.subjects.copy()
        others = np.flatnonzero(~was_best)
        template = self.index.subject_vectors(subject_id)
        if template is not None and len(others):
            new = exact_scores(kept.probes[others], template)
            better = new > scores[others]
            scores[others[better]] = new[better]
            subjects[others[better]] = subject_id
        self._search_into(kept, scores, subjects, np.flatnonzero(was_best))

    def _search_again(self, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            kept = self._kept
            self._search_into(kept, kept.scores.copy(), kept.subjects.copy(), rows)

    def _search_into(
        self, kept: KeptScores, scores: np.ndarray, subjects: np.ndarray, rows: np.ndarray
    ) -> None:
        if len(rows):
            found = self._top1(kept.probes[rows])
            scores[rows], subjects[rows] = found
        self._publish(kept, scores, subjects)

    def _search_all(self, probes: np.ndarray, source: str) -> KeptScores:
        scores, subjects = self._top1(probes)
        return KeptScores(source, probes, scores, subjects)

    def _top1(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each probe's best subject (found by the index) and its exact score against it."""
        scores = np.full(len(probes), -np.inf, dtype=np.float32)
        subjects = np.full(len(probes), None, dtype=object)
        if not len(probes) or not self.index.sample_count:
            return scores, subjects
        for row, candidates in enumerate(self.index.search(probes, 1)):
            if candidates:
                subjects[row] = candidates[0].subject_id
        for subject_id in set(subjects[subjects != None].tolist()):  # noqa: E711
            rows = np.flatnonzero(subjects == subject_id)
            vectors = self.index.subject_vectors(subject_id)
            if vectors is not None:
                scores[rows] = exact_scores(probes[rows], vectors)
        return scores, subjects

    def _publish(self, kept: KeptScores, scores: np.ndarray, subjects: np.ndarray) -> None:
        self._kept = KeptScores(kept.source, kept.probes, scores, subjects)
        self._warm()

    def _warm(self) -> None:
        if self.warm_fpir is not None and self.size >= min_searches_for_fpir(self.warm_fpir):
            self.for_fpir(self.warm_fpir)


def exact_scores(probes: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Each probe's best inner product with `vectors`, summed in float64 and rounded to float32.

    The index's float32 sums round differently with the batch shape and the BLAS kernel; the
    kept scores are all computed here instead, whichever path found them (full search,
    enrolment, deletion), so that a gallery rebuilt at restart keeps the very same thresholds.
    """
    products = np.asarray(probes, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    return products.max(axis=1).astype(np.float32)


def _fingerprint(probes: np.ndarray, source: str) -> str:
    digest = hashlib.sha256(f"{source}\0{probes.shape}\0{probes.dtype}\0".encode())
    digest.update(np.ascontiguousarray(probes).data)
    return digest.hexdigest()


def _restore(saved: Mapping[str, np.ndarray], probes: np.ndarray, source: str) -> KeptScores | None:
    """The kept scores in `saved` if they were saved for these probes; None otherwise."""
    try:
        fingerprint = str(saved["calibration_probes"])
        scores = np.asarray(saved["calibration_scores"], dtype=np.float32)
        names = json.loads(saved["calibration_subjects"].tobytes())
    except (KeyError, ValueError):
        return None
    if fingerprint != _fingerprint(probes, source) or not (
        scores.shape == (len(names),) == (len(probes),)
    ):
        return None
    subjects = np.empty(len(names), dtype=object)
    subjects[:] = names
    return KeptScores(source, probes, scores, subjects)


def _upper(kept: KeptScores, threshold: float) -> float:
    accepted = round(realised_fpir(kept.scores, threshold) * kept.size)
    return fpir_upper_bound(accepted, kept.size)


def _describe(kept: KeptScores) -> str:
    return (
        "the gallery's calibration set"
        if kept.source == "gallery"
        else "the model's calibration set"
    )

"""Per-gallery thresholds from the bundle's calibration set, against the *current* gallery.

Every calibration embedding is a non-mated probe: its top-1 score against the gallery (the
same scoring rule as identify) is what an unknown person would score. FPIR at a fixed threshold
grows with the gallery, so thresholds are recomputed whenever the gallery's vectors change: the
top-1 scores are cached per index and vectors version, thresholds per FPIR on top of them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from models.calibration import (
    CalibrationError,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)
from service.core.errors import ServiceError
from service.index import SubjectSearch


class UnsupportedFPIR(ServiceError):
    """An FPIR the calibration set cannot support (too few non-mated searches)."""

    def __init__(self, message: str) -> None:
        super().__init__("unsupported_fpir", message)


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None for an empty gallery: nothing can match
    fpir: float  # the requested FPIR, or the estimated one for an explicit threshold


def check_fpir_supported(fpir: float, num_searches: int) -> None:
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
            f"the model's calibration set has {num_searches}: choose fpir >= "
            f"{10.0 / num_searches:.6g} or pass an explicit threshold"
        )


def default_fpir(configured: float, num_searches: int) -> float:
    """The FPIR a gallery gets when its creator names none: the configured default, raised to
    the smallest FPIR the model's calibration set supports (10 / M) when it is too small to
    calibrate the default. An FPIR asked for explicitly is never raised: it is refused."""
    if num_searches >= min_searches_for_fpir(configured):
        return configured
    return min(1.0, 10.0 / num_searches)


class Calibrator:
    """Thread-safe caches of non-mated top-1 scores and thresholds per index.

    Keyed by the index object (weakly: an index dropped by a migration or a deletion takes its
    entries with it) and its `vectors_version`, so only a change to the vectors invalidates
    them: a subject's metadata or a new empty subject does not.
    """

    _MAX_THRESHOLDS = 64  # per index: FPIRs asked for explicitly

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scores: weakref.WeakKeyDictionary[SubjectSearch, tuple[int, np.ndarray]] = (
            weakref.WeakKeyDictionary()
        )
        self._thresholds: weakref.WeakKeyDictionary[
            SubjectSearch, dict[tuple[int, float], float]
        ] = weakref.WeakKeyDictionary()

    def nonmated_scores(self, index: SubjectSearch, calibration: np.ndarray) -> np.ndarray:
        version = index.vectors_version
        with self._lock:
            cached = self._scores.get(index)
        if cached is not None and cached[0] == version:
            return cached[1]
        # Computed outside the lock: a search against a large gallery takes a while, and two
        # threads computing the same version get the same answer.
        scores, version = index.top1_scores(calibration)
        with self._lock:
            current = self._scores.get(index)
            if current is None or current[0] <= version:
                self._scores[index] = (version, scores)
        return scores

    def for_fpir(self, index: SubjectSearch, calibration: np.ndarray, fpir: float) -> Calibration:
        check_fpir_supported(fpir, len(calibration))
        if index.sample_count == 0:
            return Calibration(threshold=None, fpir=fpir)
        scores = self.nonmated_scores(index, calibration)
        key = (index.vectors_version, fpir)
        with self._lock:
            threshold = self._thresholds.get(index, {}).get(key)
        if threshold is None:
            try:
                threshold = threshold_for_fpir(scores, fpir)
            except CalibrationError as error:
                raise UnsupportedFPIR(str(error)) from None
            with self._lock:
                thresholds = self._thresholds.setdefault(index, {})
                if len(thresholds) > self._MAX_THRESHOLDS:
                    thresholds.clear()
                thresholds[key] = threshold
        return Calibration(threshold=threshold, fpir=fpir)

    def for_threshold(
        self, index: SubjectSearch, calibration: np.ndarray, threshold: float
    ) -> Calibration:
        """An explicit threshold: report the FPIR it gives on the calibration set."""
        if index.sample_count == 0:
            return Calibration(threshold=threshold, fpir=0.0)
        scores = self.nonmated_scores(index, calibration)
        return Calibration(threshold=threshold, fpir=realised_fpir(scores, threshold))

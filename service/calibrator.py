"""Per-gallery thresholds from the bundle's calibration set, against the *current* gallery.

Every calibration embedding is a non-mated probe: its top-1 score against the gallery (the
same scoring rule as identify) is what an unknown person would score. FPIR at a fixed threshold
grows with the gallery, so thresholds are recomputed whenever the gallery changes: the top-1
scores are cached per (gallery, model, gallery version), thresholds per FPIR on top of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from models.calibration import (
    CalibrationError,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)
from service.index.subjects import SubjectIndex


class UnsupportedFPIR(ValueError):
    """An FPIR the calibration set cannot support (too few non-mated searches)."""


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None for an empty gallery: nothing can match
    fpir: float  # the requested FPIR, or the estimated one for an explicit threshold


def check_fpir_supported(fpir: float, num_searches: int) -> None:
    if not 0.0 < fpir <= 1.0:
        raise UnsupportedFPIR(f"fpir must be in (0, 1], got {fpir}")
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
    """Thread-safe cache of non-mated top-1 scores per (gallery, model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scores: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        self._thresholds: dict[tuple[str, str, int, float], float] = {}

    def nonmated_scores(
        self, gallery: str, model_id: str, index: SubjectIndex, calibration: np.ndarray
    ) -> np.ndarray:
        version = index.version
        with self._lock:
            cached = self._scores.get((gallery, model_id))
        if cached is not None and cached[0] == version:
            return cached[1]
        # Computed outside the lock: a search against a large gallery takes a while, and two
        # threads computing the same version get the same answer.
        with index.lock.read():
            version = index.version
        scores = index.top1_scores(calibration)
        with self._lock:
            current = self._scores.get((gallery, model_id))
            if current is None or current[0] <= version:
                self._scores[(gallery, model_id)] = (version, scores)
        return scores

    def for_fpir(
        self,
        gallery: str,
        model_id: str,
        index: SubjectIndex,
        calibration: np.ndarray,
        fpir: float,
    ) -> Calibration:
        check_fpir_supported(fpir, len(calibration))
        if index.sample_count == 0:
            return Calibration(threshold=None, fpir=fpir)
        scores = self.nonmated_scores(gallery, model_id, index, calibration)
        key = (gallery, model_id, index.version, fpir)
        with self._lock:
            threshold = self._thresholds.get(key)
        if threshold is None:
            try:
                threshold = threshold_for_fpir(scores, fpir)
            except CalibrationError as error:
                raise UnsupportedFPIR(str(error)) from None
            with self._lock:
                if len(self._thresholds) > 4096:
                    self._thresholds.clear()
                self._thresholds[key] = threshold
        return Calibration(threshold=threshold, fpir=fpir)

    def for_threshold(
        self,
        gallery: str,
        model_id: str,
        index: SubjectIndex,
        calibration: np.ndarray,
        threshold: float,
    ) -> Calibration:
        """An explicit threshold: report the FPIR it gives on the calibration set."""
        if index.sample_count == 0:
            return Calibration(threshold=threshold, fpir=0.0)
        scores = self.nonmated_scores(gallery, model_id, index, calibration)
        return Calibration(threshold=threshold, fpir=realised_fpir(scores, threshold))

    def forget(self, gallery: str) -> None:
        with self._lock:
            for key in [key for key in self._scores if key[0] == gallery]:
                del self._scores[key]
            for key in [key for key in self._thresholds if key[0] == gallery]:
                del self._thresholds[key]

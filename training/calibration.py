"""Gallery search and the FPIR -> threshold table of a bundle's manifest.

A gallery holds samples (embeddings) of subjects. A probe's score against a subject is the
cosine between L2-normalised embeddings, against either the subject's *template* (the mean of
its normalised samples, renormalised: ``template="mean"``) or its best sample
(``template="max"``). The top-1 subject is the best-scoring one (the first in sorted subject
order on an exact tie).

The calibration table comes from M non-mated searches: the top-1 scores of calibration
embeddings (validation negatives / unknowns, none of them enrolled) against the gallery, one
row per target FPIR with the threshold of :func:`models.calibration.threshold_for_fpir`:

    {"fpir": α, "threshold": θ, "supported": M >= ⌈10/α⌉, "searches": M}

Rows with too few searches are *kept and marked* ``"supported": false`` (and a
:class:`SmallCalibrationWarning` is issued) rather than dropped: the threshold is still the
rule's answer on the data there is, but fewer than 10 non-mated searches lie above it, so the
FPIR it realises on new data is noisy. The manifest loader accepts these rows as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from models.calibration import min_searches_for_fpir, threshold_for_fpir

DEFAULT_FPIRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
Template = Literal["mean", "max"]
_CHUNK = 2048  # probes scored at once: bounds memory to chunk x gallery samples


class SmallCalibrationWarning(UserWarning):
    """A target FPIR needs more non-mated searches than the calibration set has."""


def l2_normalise(
    embeddings: Any, name: str = "embeddings", *, allow_zero: bool = False
) -> np.ndarray:
    """Rows scaled to unit length (float32); non-finite or non-2-D input: ValueError.

    An all-zero row is a ValueError, or stays zero with ``allow_zero`` (a probe embedding of
    zero, e.g. from a ReLU network or ObjectoSphere training, then scores 0 everywhere).
    """
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    zero = norms == 0
    if zero.any() and not allow_zero:
        raise ValueError(f"{name}: row {int(np.flatnonzero(zero)[0])} is all zeros")
    return (array / np.where(zero, 1.0, norms)).astype(np.float32)


class Gallery:
    """Enrolled samples grouped by subject, scored by cosine similarity.

    ``subjects`` holds the distinct subject labels in sorted order; score matrices have one
    column per subject in that order.
    """

    def __init__(self, embeddings: Any, subjects: Any, template: Template = "mean") -> None:
        if template not in ("mean", "max"):
            raise ValueError(f"template must be 'mean' or 'max', got {template!r}")
        samples = l2_normalise(embeddings, "gallery embeddings")
        labels = np.asarray(subjects)
        if labels.shape != (samples.shape[0],):
            raise ValueError(
                f"gallery subjects must have shape [{samples.shape[0]}] (one per embedding), "
                f"got {list(labels.shape)}"
            )
        if samples.shape[0] == 0:
            raise ValueError("the gallery is empty")
        self.template = template
        self.subjects, subject_index = np.unique(labels, return_inverse=True)
        self.dim = samples.shape[1]
        self.num_samples = samples.shape[0]
        if template == "mean":
            sums = np.zeros((self.subjects.size, self.dim), dtype=np.float64)
            np.add.at(sums, subject_index, samples)
            self._vectors = l2_normalise(sums, "gallery templates")
            self._starts = None
        else:
            order = np.argsort(subject_index, kind="stable")
            self._vectors = samples[order]
            self._starts = np.flatnonzero(np.r_[True, np.diff(subject_index[order]) != 0])

    def scores(self, probes: Any) -> np.ndarray:
        """Cosine score of every probe against every subject: float32 [P, subjects].

        An all-zero probe embedding has no direction: it scores 0 against every subject.
        """
        unit = l2_normalise(probes, "probe embeddings", allow_zero=True)
        if unit.shape[1] != self.dim:
            raise ValueError(
                f"probe embeddings have dimension {unit.shape[1]}, the gallery {self.dim}"
            )
        out = np.empty((unit.shape[0], self.subjects.size), dtype=np.float32)
        for start in range(0, unit.shape[0], _CHUNK):
            chunk = unit[start : start + _CHUNK] @ self._vectors.T
            if self._starts is not None:
                chunk = np.maximum.reduceat(chunk, self._starts, axis=1)
            out[start : start + _CHUNK] = chunk
        return out

    def top1(self, probes: Any) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 subject label, top-1 score) per probe."""
        scores = self.scores(probes)
        best = np.argmax(scores, axis=1)
        return self.subjects[best], scores[np.arange(best.size), best]


def calibration_table(
    nonmated_top1_scores: Any, fpirs: Sequence[float] = DEFAULT_FPIRS
) -> list[dict[str, Any]]:
    """One manifest calibration row per target FPIR (ascending), from non-mated top-1 scores.

    Warns (:class:`SmallCalibrationWarning`) once, naming every unsupported FPIR.
    """
    scores = np.asarray(nonmated_top1_scores)
    targets = sorted({float(f) for f in fpirs})
    if not targets:
        raise ValueError("no target FPIR given")
    searches = int(scores.size)
    rows = []
    for fpir in targets:
        rows.append(
            {
                "fpir": fpir,
                "threshold": threshold_for_fpir(scores, fpir),
                "supported": searches >= min_searches_for_fpir(fpir),
                "searches": searches,
            }
        )
    short = [row["fpir"] for row in rows if not row["supported"]]
    if short:
        needed = min_searches_for_fpir(min(short))
        warnings.warn(
            f"calibration has {searches} non-mated searches; FPIR {short} need at least "
            f'10/FPIR (up to {needed}): those rows are marked "supported": false',
            SmallCalibrationWarning,
            stacklevel=2,
        )
    return rows


def calibrate_gallery(
    calibration_embeddings: Any,
    gallery: Gallery,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
) -> list[dict[str, Any]]:
    """The calibration table of ``gallery`` from non-mated embeddings (none enrolled)."""
    _, scores = gallery.top1(calibration_embeddings)
    return calibration_table(scores, fpirs)

"""Open-set recognition metrics, plain numpy.

Convention everywhere: a higher score means "more likely known" (e.g. the top-1 cosine
similarity of a probe against the gallery); a probe is accepted when ``score >= threshold``.

- :func:`closed_set_accuracy`: share of known samples whose predicted label is right.
- :func:`auroc`: area under the ROC of knowns (positives) vs unknowns (negatives),
  rank-based (Mann–Whitney U): P(known score > unknown score) + 0.5 P(equal).
- :func:`fpr_at_tpr`: share of unknowns accepted at the highest threshold that still
  accepts at least ``tpr`` (default 95%) of the knowns.
- :func:`oscr_curve` / :func:`oscr_area`: Open-Set Classification Rate (Dhamija et al.
  2018). At threshold θ, CCR = share of knowns that are correctly classified *and* have
  score >= θ; FPR = share of unknowns with score >= θ. The curve runs over every distinct
  score from θ = +inf (0, 0) down to the lowest score (1, accuracy); the area is the
  trapezoidal integral of CCR over FPR, so tied scores count half, as in :func:`auroc`
  (with every known correct, the OSCR area equals the AUROC).
- Gallery search (identification): :func:`dir_at_fpir` and :func:`dir_fpir_curve`. A mated
  probe is detected and identified when its own subject ranks first and its top-1 score
  reaches the threshold; the threshold for FPIR α comes from the non-mated top-1 scores by
  :func:`models.calibration.threshold_for_fpir` (the one calibration rule of the project).
- :func:`realised_fpir`: share of non-mated top-1 scores >= a threshold (re-exported from
  :mod:`models.calibration`).

Each function checks its input and raises ValueError for empty, mismatched or non-finite
arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.calibration import realised_fpir, threshold_for_fpir

__all__ = [
    "auroc",
    "closed_set_accuracy",
    "detection_rate",
    "dir_at_fpir",
    "dir_fpir_curve",
    "fpr_at_tpr",
    "oscr_area",
    "oscr_curve",
    "realised_fpir",
]


def _scores(values: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {list(array.shape)}")
    if array.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _flags(values: Any, name: str, length: int) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != bool:
        raise ValueError(f"{name} must be booleans, got dtype {array.dtype}")
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape [{length}], got {list(array.shape)}")
    return array


def closed_set_accuracy(predicted: Any, truth: Any) -> float:
    """Share of samples whose predicted label equals the true label."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.ndim != 1 or predicted.shape != truth.shape:
        raise ValueError(
            f"predicted and truth must be 1-D of the same length, got "
            f"{list(predicted.shape)} and {list(truth.shape)}"
        )
    if predicted.size == 0:
        raise ValueError("no samples")
    return float(np.mean(predicted == truth))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of each run of equal values, and its length.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lengths = np.diff(np.r_[starts, ordered.size])
    mean_rank = starts + (lengths + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def auroc(known_scores: Any, unknown_scores: Any) -> float:
    """P(a known outscores an unknown), ties counted half (Mann–Whitney U / (n_k n_u))."""
    known = _scores(known_scores, "known_scores")
    unknown = _scores(unknown_scores, "unknown_scores")
    ranks = _average_ranks(np.concatenate([known, unknown]))
    n_known, n_unknown = known.size, unknown.size
    u_statistic = ranks[:n_known].sum() - n_known * (n_known + 1) / 2.0
    return float(u_statistic / (n_known * n_unknown))


def fpr_at_tpr(known_scores: Any, unknown_scores: Any, tpr: float = 0.95) -> float:
    """FPR at the highest threshold accepting at least ``tpr`` of the knowns.

    θ = the ⌈tpr · n_known⌉-th largest known score; FPR = share of unknowns >= θ.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    known = np.sort(_scores(known_scores, "known_scores"))[::-1]
    unknown = _scores(unknown_scores, "unknown_scores")
    # The slack keeps 0.95 * 20 = 19.000000000000004 from asking for 20.
    needed = max(1, math.ceil(tpr * known.size - 1e-9))
    threshold = known[needed - 1]
    return float(np.mean(unknown >= threshold))


def _accepted_shares(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold (descending), the share of ``scores`` >= it."""
    ascending = np.sort(scores)
    below = np.searchsorted(ascending, thresholds, side="left")
    return (scores.size - below) / scores.size


def oscr_curve(
    known_scores: Any, known_correct: Any, unknown_scores: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, ccr, thresholds) at every distinct score, thresholds descending from +inf.

    ``known_correct[i]`` says whether known sample i is classified correctly (closed-set).
    """
    known = _scores(known_scores, "known_scores")
    correct = _flags(known_correct, "known_correct", known.size)
    unknown = _scores(unknown_scores, "unknown_scores")
    distinct = np.unique(np.concatenate([known, unknown]))[::-1]
    thresholds = np.concatenate([[np.inf], distinct])
    fpr = _accepted_shares(unknown, thresholds)
    # CCR counts correct knowns only, but divides by all knowns.
    ccr = (
        _accepted_shares(known[correct], thresholds) * correct.mean()
        if correct.any()
        else (np.zeros(thresholds.size))
    )
    return fpr, ccr, thresholds


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def oscr_area(known_scores: Any, known_correct: Any, unknown_scores: Any) -> float:
    """Area under the OSCR curve (CCR over FPR from 0 to 1), at most the accuracy."""
    fpr, ccr, _ = oscr_curve(known_scores, known_correct, unknown_scores)
    return _trapezoid(fpr, ccr)


def dir_at_fpir(
    mated_top1_scores: Any,
    mated_rank1_correct: Any,
    nonmated_top1_scores: Any,
    fpir: float,
) -> tuple[float, float]:
    """(DIR, threshold) at target ``fpir``, the threshold calibrated on the non-mated scores.

    DIR = share of mated probes whose own subject ranks first (``mated_rank1_correct``) and
    whose top-1 score >= the threshold.
    """
    mated = _scores(mated_top1_scores, "mated_top1_scores")
    correct = _flags(mated_rank1_correct, "mated_rank1_correct", mated.size)
    nonmated = _scores(nonmated_top1_scores, "nonmated_top1_scores")
    threshold = threshold_for_fpir(nonmated, fpir)
    return detection_rate(mated, correct, threshold), threshold


def detection_rate(mated_top1_scores: Any, mated_rank1_correct: Any, threshold: float) -> float:
    """DIR at a given threshold: share of mated probes identified at rank 1 with score >= it."""
    mated = _scores(mated_top1_scores, "mated_top1_scores")
    correct = _flags(mated_rank1_correct, "mated_rank1_correct", mated.size)
    return float(np.mean(correct & (mated >= threshold)))


def dir_fpir_curve(
    mated_top1_scores: Any, mated_rank1_correct: Any, nonmated_top1_scores: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpir, dir, thresholds): every operating point the non-mated scores allow.

    Thresholds: just above the highest non-mated score (FPIR 0), then each distinct
    non-mated score descending (FPIR up to 1). The point with the largest FPIR <= α is the
    operating point :func:`dir_at_fpir` picks for α (the same non-mated searches accepted;
    after a tie its threshold may sit lower, just above the next non-mated score).
    """
    mated = _scores(mated_top1_scores, "mated_top1_scores")
    correct = _flags(mated_rank1_correct, "mated_rank1_correct", mated.size)
    nonmated = _scores(nonmated_top1_scores, "nonmated_top1_scores")
    distinct = np.unique(nonmated)[::-1]
    thresholds = np.concatenate([[np.nextafter(distinct[0], np.inf)], distinct])
    fpir = _accepted_shares(nonmated, thresholds)
    identified = mated[correct]
    dir_ = (
        _accepted_shares(identified, thresholds) * correct.mean()
        if identified.size
        else np.zeros(thresholds.size)
    )
    return fpir, dir_, thresholds

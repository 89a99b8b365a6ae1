"""Thresholds for a target false positive identification rate (FPIR).

Given the top-1 scores of M non-mated searches (probes whose subject is not enrolled, each
searched against the gallery) and a target FPIR α:

1. sort the scores descending: s_1 >= s_2 >= ... >= s_M;
2. k = ⌊αM⌋ (computed as the largest k <= M with k / M <= α in float64, so that
   α = 0.29, M = 100 gives k = 29 although 0.29 * 100 = 28.999... in binary);
3. θ = s_k, accept a probe when its score >= θ;
4. if s_{k+1} == s_k (a tie at the boundary), accepting s_k would accept more than k
   searches: θ moves up to the next float above s_k, so realised FPIR <= α always;
5. k = 0 puts θ just above s_1 (nothing of the calibration set is accepted).

"The next float" is the next float64, or the next float32 when the scores are float32
(float16 is treated as float32): a float32 score is then compared with θ exactly, whether
the comparison happens in float32 or float64. Compare scores of the same precision as the
ones calibrated on.

The rule is only as good as M: with M < 10/α fewer than 10 non-mated searches sit above θ,
and the realised FPIR on new data is noisy; :func:`min_searches_for_fpir` tells how many
are needed, callers report the shortfall.

A threshold calibrated on M searches estimates the FPIR from a sample: :func:`fpir_upper_bound`
gives the one-sided Clopper-Pearson (exact binomial) upper confidence bound on the FPIR it
realises for strangers like the calibration set, from the searches it accepted.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np


class CalibrationError(ValueError):
    """A threshold that cannot be computed (bad FPIR, no scores, NaN scores)."""


def _check_fpir(fpir: Any) -> float:
    if isinstance(fpir, bool) or not isinstance(fpir, int | float | np.integer | np.floating):
        raise CalibrationError(f"fpir must be a number in (0, 1], got {fpir!r}")
    fpir = float(fpir)
    if not (0.0 < fpir <= 1.0):  # also rejects NaN
        raise CalibrationError(f"fpir must be in (0, 1], got {fpir}")
    return fpir


def _check_scores(scores: Any) -> np.ndarray:
    array = np.asarray(scores)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise CalibrationError(f"scores must be numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise CalibrationError(f"scores must be a 1-D array, got shape {list(array.shape)}")
    if array.size == 0:
        raise CalibrationError("no non-mated scores: cannot calibrate on an empty set")
    if not np.isfinite(array).all():
        raise CalibrationError("scores contain NaN or infinite values")
    if np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize <= 4:
        return array.astype(np.float32)
    return array.astype(np.float64)


def _accepted_count(fpir: float, num_searches: int) -> int:
    """Largest k in [0, M] with k / M <= fpir (float64 division)."""
    k = min(num_searches, math.floor(fpir * num_searches))
    while k < num_searches and (k + 1) / num_searches <= fpir:
        k += 1
    while k > 0 and k / num_searches > fpir:
        k -= 1
    return k


def threshold_for_fpir(nonmated_top1_scores: np.ndarray, fpir: float) -> float:
    """The threshold θ whose realised FPIR on these scores is the largest <= ``fpir``.

    Accept when score >= θ. See the module docstring for the rule, ties and precision.
    Raises CalibrationError for fpir outside (0, 1], empty or non-finite scores.
    """
    fpir = _check_fpir(fpir)
    scores = _check_scores(nonmated_top1_scores)
    descending = np.sort(scores)[::-1]
    k = _accepted_count(fpir, descending.size)
    if k == 0:
        return _next_above(descending[0])
    theta = descending[k - 1]
    if k < descending.size and descending[k] == theta:
        return _next_above(theta)
    return float(theta)


def _next_above(value: np.floating) -> float:
    return float(np.nextafter(value, value.dtype.type(np.inf)))


def min_searches_for_fpir(fpir: float) -> int:
    """Non-mated searches needed to calibrate ``fpir`` reliably: ⌈10 / fpir⌉."""
    fpir = _check_fpir(fpir)
    # The small slack stops 10 / 0.1 = 100.00000000000001 from asking for 101.
    return math.ceil(10.0 / fpir - 1e-9)


def realised_fpir(nonmated_top1_scores: np.ndarray, threshold: float) -> float:
    """Share of non-mated top-1 scores >= ``threshold``."""
    scores = _check_scores(nonmated_top1_scores)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise CalibrationError("threshold is NaN")
    # Compared exactly (float64 holds every float32), whatever precision the scores have.
    return float(np.count_nonzero(scores.astype(np.float64) >= threshold) / scores.size)


def fpir_upper_bound(accepted: int, searches: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on the FPIR behind ``accepted`` of ``searches``.

    The largest p with P(X <= accepted) >= 1 - confidence for X ~ Binomial(searches, p): with
    probability ``confidence`` the FPIR that the threshold realises for strangers like the
    calibration set is at most this. Equals the beta quantile B(confidence; k + 1, M - k);
    k = 0 gives 1 - (1 - confidence)^(1/M), k = M gives 1.
    """
    for name, value in (("accepted", accepted), ("searches", searches)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise CalibrationError(f"{name} must be an integer, got {value!r}")
    if not 0 <= accepted <= searches or searches < 1:
        raise CalibrationError(
            f"need 0 <= accepted <= searches and searches >= 1, got {accepted} of {searches}"
        )
    if not 0.0 < float(confidence) < 1.0:
        raise CalibrationError(f"confidence must be in (0, 1), got {confidence}")
    return _clopper_pearson_upper(int(accepted), int(searches), float(confidence))


@lru_cache(maxsize=4096)
def _clopper_pearson_upper(k: int, m: int, confidence: float) -> float:
    alpha = 1.0 - confidence
    if k == m:
        return 1.0
    if k == 0:  # P(X = 0) = (1 - p)^M = alpha
        return -math.expm1(math.log(alpha) / m)
    # log C(M, j) for j = 0..k, summed term by term (lgamma(M + 1) - ... loses digits for a
    # large M); then bisection on p of log P(X <= k), which decreases in p.
    j = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.concatenate(([0.0], np.cumsum(np.log(m - j + 1.0) - np.log(j))))
    successes = np.arange(k + 1, dtype=np.float64)
    log_alpha = math.log(alpha)
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        terms = log_choose + successes * math.log(middle) + (m - successes) * math.log1p(-middle)
        peak = float(terms.max())
        log_cdf = peak + math.log(float(np.exp(terms - peak).sum()))
        if log_cdf > log_alpha:
            low = middle
        else:
            high = middle
    return high

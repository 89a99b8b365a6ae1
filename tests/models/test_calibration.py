import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calibration import (
    CalibrationError,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)


def above(value: float) -> float:
    return float(np.nextafter(value, np.inf))


def test_no_tie_threshold_is_the_kth_largest() -> None:
    # M = 4, fpir 0.5 -> k = 2 -> θ = second largest = 0.8, two of four accepted.
    scores = np.array([0.7, 0.9, 0.6, 0.8])
    assert threshold_for_fpir(scores, 0.5) == 0.8
    assert realised_fpir(scores, 0.8) == 0.5


def test_tie_moves_threshold_just_above() -> None:
    # k = 2 -> θ would be 0.8, but 0.8 appears twice: accepting it would accept 3 of 4.
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    theta = threshold_for_fpir(scores, 0.5)
    assert theta == above(0.8)
    assert realised_fpir(scores, theta) == 0.25


def test_tie_above_boundary_does_not_move_threshold() -> None:
    # k = 3 -> θ = 0.8 (third largest); the tie 0.9, 0.9 is above it: three accepted.
    scores = np.array([0.9, 0.9, 0.8, 0.7])
    assert threshold_for_fpir(scores, 0.75) == 0.8


def test_all_equal_scores_accept_nothing_below_fpir_one() -> None:
    scores = np.full(4, 0.5)
    assert realised_fpir(scores, threshold_for_fpir(scores, 0.5)) == 0.0
    assert threshold_for_fpir(scores, 1.0) == 0.5


def test_k_zero_puts_threshold_just_above_the_max() -> None:
    # floor(0.2 * 3) = 0
    scores = np.array([0.3, 0.1, 0.2])
    theta = threshold_for_fpir(scores, 0.2)
    assert theta == above(0.3)
    assert realised_fpir(scores, theta) == 0.0


def test_fpir_one_accepts_everything() -> None:
    scores = np.array([0.3, -0.1, 0.2, -0.1])
    assert threshold_for_fpir(scores, 1.0) == -0.1
    assert realised_fpir(scores, -0.1) == 1.0


def test_k_is_robust_to_binary_fractions() -> None:
    # 0.29 * 100 = 28.999999999999996 in float64; 29 of 100 is still 0.29.
    scores = np.arange(100, dtype=np.float64)[::-1] / 100  # 0.99, 0.98, ..., 0.0
    theta = threshold_for_fpir(scores, 0.29)
    assert theta == scores[28]
    assert realised_fpir(scores, theta) == 0.29


def test_float32_scores_get_a_float32_step() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7], dtype=np.float32)
    theta = threshold_for_fpir(scores, 0.5)
    assert theta == float(np.nextafter(np.float32(0.8), np.float32(np.inf)))
    # The comparison gives the same answer in float32 and float64.
    assert np.count_nonzero(scores >= np.float32(theta)) == 1
    assert np.count_nonzero(scores.astype(np.float64) >= theta) == 1


def test_integer_scores_are_accepted() -> None:
    assert threshold_for_fpir(np.array([3, 2, 1, 0]), 0.5) == 2.0


@pytest.mark.parametrize("fpir", [0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), "0.1", True])
def test_bad_fpir(fpir: object) -> None:
    with pytest.raises(CalibrationError, match="fpir"):
        threshold_for_fpir(np.array([0.1, 0.2]), fpir)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="fpir"):
        min_searches_for_fpir(fpir)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (np.array([]), "empty"),
        (np.array([0.1, np.nan]), "NaN"),
        (np.array([0.1, np.inf]), "infinite"),
        (np.ones((2, 2)), "1-D"),
        (np.array(["a", "b"]), "numbers"),
    ],
)
def test_bad_scores(scores: np.ndarray, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        threshold_for_fpir(scores, 0.1)
    with pytest.raises(CalibrationError, match=message):
        realised_fpir(scores, 0.1)


def test_realised_fpir_counts_scores_at_or_above() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    assert realised_fpir(scores, 0.8) == 0.75
    assert realised_fpir(scores, 0.95) == 0.0
    assert realised_fpir(scores, -1.0) == 1.0
    with pytest.raises(CalibrationError, match="NaN"):
        realised_fpir(scores, float("nan"))


@pytest.mark.parametrize(
    ("fpir", "needed"), [(1.0, 10), (0.1, 100), (0.01, 1000), (1e-3, 10000), (0.3, 34)]
)
def test_min_searches(fpir: float, needed: int) -> None:
    assert min_searches_for_fpir(fpir) == needed


scores_strategy = st.lists(
    # A small grid makes ties common; wide floats cover the rest.
    st.one_of(
        st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]),
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    ),
    min_size=1,
    max_size=60,
)
fpir_strategy = st.floats(1e-4, 1.0, exclude_min=False)


@settings(max_examples=300, deadline=None)
@given(scores=scores_strategy, fpir=fpir_strategy)
def test_realised_fpir_never_exceeds_target_and_is_the_best_possible(
    scores: list[float], fpir: float
) -> None:
    array = np.array(scores)
    theta = threshold_for_fpir(array, fpir)
    realised = realised_fpir(array, theta)
    assert realised <= fpir
    # No other threshold does better without exceeding the target: the candidates are each
    # distinct score and "above the maximum" (FPIR 0).
    achievable = [realised_fpir(array, s) for s in set(scores)] + [0.0]
    assert realised == max(r for r in achievable if r <= fpir)


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=200, unique=True),
    fpir=fpir_strategy,
)
def test_distinct_scores_realise_floor_of_fpir_times_m(scores: list[float], fpir: float) -> None:
    array = np.array(scores)
    realised = realised_fpir(array, threshold_for_fpir(array, fpir))
    m = len(scores)
    assert realised <= fpir
    # floor(fpir * M), read as "the largest k with k / M <= fpir" (robust to binary rounding).
    k = max(k for k in range(m + 1) if k / m <= fpir)
    assert k in (math.floor(fpir * m), math.floor(fpir * m) + 1)
    assert realised == k / m


@pytest.mark.parametrize(
    ("fpir", "theta", "realised"),
    [
        (0.1, above(0.9), 0.0),
        (0.25, 0.9, 0.25),
        (0.5, above(0.8), 0.25),
        (0.75, 0.8, 0.75),
        (1.0, 0.7, 1.0),
    ],
)
def test_worked_example_of_docs_bundle_md(fpir: float, theta: float, realised: float) -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    assert threshold_for_fpir(scores, fpir) == theta
    assert realised_fpir(scores, theta) == realised


# -- fpir_upper_bound: the one-sided Clopper-Pearson bound --


def test_fpir_upper_bound_edge_cases_by_hand() -> None:
    from models.calibration import fpir_upper_bound

    # k = 0: (1 - p)^M = 0.05 -> p = 1 - 0.05^(1/M); M = 1000 -> 0.0029912...
    assert fpir_upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-12)
    assert fpir_upper_bound(0, 1) == pytest.approx(0.95, rel=1e-12)
    # k = M: nothing bounds it below 1.
    assert fpir_upper_bound(7, 7) == 1.0
    # M = 2, k = 1: P(X <= 1) = 1 - p^2 = 0.05 -> p = sqrt(0.95).
    assert fpir_upper_bound(1, 2) == pytest.approx(math.sqrt(0.95), rel=1e-12)
    # M = 3, k = 2: 1 - p^3 = 0.1 (confidence 0.9) -> p = 0.9^(1/3).
    assert fpir_upper_bound(2, 3, confidence=0.9) == pytest.approx(0.9 ** (1 / 3), rel=1e-12)


@pytest.mark.parametrize(
    ("accepted", "searches"),
    [
        (1, 10),
        (5, 100),
        (10, 1000),
        (9, 1000),
        (100, 1000),
        (50, 100),
        (99, 100),
        (1, 1_000_000),
        (10, 1_000_000),
        (1000, 100_000),
        (499, 500),
    ],
)
def test_fpir_upper_bound_equals_the_beta_quantile(accepted: int, searches: int) -> None:
    from scipy.stats import beta

    from models.calibration import fpir_upper_bound

    expected = beta.ppf(0.95, accepted + 1, searches - accepted)
    assert fpir_upper_bound(accepted, searches) == pytest.approx(expected, rel=1e-9)
    assert fpir_upper_bound(accepted, searches) > accepted / searches


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000).flatmap(lambda m: st.tuples(st.integers(0, m), st.just(m))),
    st.sampled_from([0.9, 0.95, 0.99]),
)
def test_fpir_upper_bound_matches_scipy_everywhere(
    case: tuple[int, int], confidence: float
) -> None:
    from scipy.stats import beta

    from models.calibration import fpir_upper_bound

    accepted, searches = case
    expected = (
        1.0 if accepted == searches else beta.ppf(confidence, accepted + 1, searches - accepted)
    )
    assert fpir_upper_bound(accepted, searches, confidence) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10), "accepted <= searches"),
        ((11, 10), "accepted <= searches"),
        ((0, 0), "searches >= 1"),
        ((1.0, 10), "integer"),
        ((True, 10), "integer"),
    ],
)
def test_fpir_upper_bound_rejects_bad_counts(args: tuple, message: str) -> None:
    from models.calibration import fpir_upper_bound

    with pytest.raises(CalibrationError, match=message):
        fpir_upper_bound(*args)

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from models.calibration import threshold_for_fpir
from training.metrics import (
    auroc,
    closed_set_accuracy,
    detection_rate,
    dir_at_fpir,
    dir_fpir_curve,
    fpr_at_tpr,
    oscr_area,
    oscr_curve,
    realised_fpir,
)


def brute_force_auroc(known: list[float], unknown: list[float]) -> float:
    pairs = list(itertools.product(known, unknown))
    wins = sum(1.0 if k > u else 0.5 if k == u else 0.0 for k, u in pairs)
    return wins / len(pairs)


def test_accuracy() -> None:
    assert closed_set_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert closed_set_accuracy(["a", "b"], ["a", "b"]) == 1.0
    with pytest.raises(ValueError, match="same length"):
        closed_set_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no samples"):
        closed_set_accuracy([], [])


def test_auroc_hand_worked_with_ties() -> None:
    # Pairs (k, u): (0.9 vs 0.5, 0.8, 0.9) -> 1 + 1 + 0.5; (0.8 vs ...) -> 1 + 0.5 + 0;
    # (0.4 vs ...) -> 0 + 0 + 0. Total 4 of 9 pairs.
    assert auroc([0.9, 0.8, 0.4], [0.5, 0.8, 0.9]) == pytest.approx(4 / 9)
    assert auroc([1.0, 2.0], [0.0]) == 1.0
    assert auroc([0.0], [1.0, 2.0]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5


@settings(max_examples=150, deadline=None)
@given(
    known=st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.7, 1.0]), min_size=1, max_size=20),
    unknown=st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.7, 1.0]), min_size=1, max_size=20),
)
def test_auroc_matches_pair_count_and_sklearn(known: list[float], unknown: list[float]) -> None:
    expected = brute_force_auroc(known, unknown)
    assert auroc(known, unknown) == pytest.approx(expected, abs=1e-12)
    labels = [1] * len(known) + [0] * len(unknown)
    if 0 < sum(labels) < len(labels):
        assert auroc(known, unknown) == pytest.approx(roc_auc_score(labels, known + unknown))


@pytest.mark.parametrize(
    ("known", "unknown"),
    [([], [0.1]), ([0.1], []), ([np.nan], [0.1]), ([[0.1]], [0.1])],
)
def test_auroc_bad_input(known: list, unknown: list) -> None:
    with pytest.raises(ValueError, match=r"(known|unknown)_scores"):
        auroc(known, unknown)


def test_fpr_at_95_tpr_hand_worked() -> None:
    known = np.arange(1, 21, dtype=float)  # 20 knowns: 19 must be accepted -> θ = 2
    unknown = np.array([0.5, 1.5, 2.0, 2.5, 30.0])  # 2.0, 2.5, 30 reach θ
    assert fpr_at_tpr(known, unknown) == pytest.approx(3 / 5)
    # With 10 knowns, 95% needs all ten: θ = 1
    assert fpr_at_tpr(np.arange(1, 11, dtype=float), unknown) == pytest.approx(4 / 5)
    assert fpr_at_tpr([1.0, 2.0], [0.0, 1.0, 3.0], tpr=0.5) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0], [0.0], tpr=0.0)


@settings(max_examples=100, deadline=None)
@given(
    known=st.lists(st.integers(0, 8), min_size=1, max_size=40),
    unknown=st.lists(st.integers(0, 8), min_size=1, max_size=40),
)
def test_fpr_at_tpr_matches_sklearn_roc_curve(known: list[int], unknown: list[int]) -> None:
    labels = [1] * len(known) + [0] * len(unknown)
    fpr, tpr, _ = roc_curve(labels, known + unknown, drop_intermediate=False)
    # The first operating point (highest threshold) with TPR >= 95%.
    expected = fpr[np.argmax(tpr >= 0.95 - 1e-12)]
    assert fpr_at_tpr(known, unknown) == pytest.approx(expected)


def test_oscr_hand_worked() -> None:
    known = [0.9, 0.8, 0.6]
    correct = np.array([True, False, True])
    unknown = [0.85, 0.5]
    fpr, ccr, thresholds = oscr_curve(known, correct, unknown)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.85, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(ccr, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # Trapezoids: 0.5 * 1/3 (from FPR 0 to 0.5) + 0.5 * 2/3 (from 0.5 to 1).
    assert oscr_area(known, correct, unknown) == pytest.approx(0.5)


def test_oscr_tie_between_known_and_unknown_counts_half() -> None:
    assert oscr_area([0.5], np.array([True]), [0.5]) == pytest.approx(0.5)


def test_oscr_with_no_correct_known_is_zero() -> None:
    assert oscr_area([0.9, 0.1], np.array([False, False]), [0.5]) == 0.0


def test_oscr_correctness_must_be_boolean_of_matching_length() -> None:
    with pytest.raises(ValueError, match="booleans"):
        oscr_curve([0.1, 0.2], [1, 0], [0.3])
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        oscr_curve([0.1, 0.2], np.array([True]), [0.3])


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from([0.0, 0.3, 0.6, 1.0]), st.booleans()), min_size=1, max_size=30
    ),
    unknown=st.lists(st.sampled_from([0.0, 0.3, 0.6, 1.0]), min_size=1, max_size=30),
)
def test_oscr_area_bounds(data: list[tuple[float, bool]], unknown: list[float]) -> None:
    known = [s for s, _ in data]
    correct = np.array([c for _, c in data])
    area = oscr_area(known, correct, unknown)
    # All correct: OSCR is the ROC. In general CCR <= TPR pointwise, and CCR <= accuracy.
    assert oscr_area(known, np.ones(len(known), bool), unknown) == pytest.approx(
        brute_force_auroc(known, unknown)
    )
    assert area <= brute_force_auroc(known, unknown) + 1e-12
    assert area <= correct.mean() + 1e-12
    fpr, ccr, _ = oscr_curve(known, correct, unknown)
    assert fpr[0] == 0 and fpr[-1] == 1 and ccr[-1] == pytest.approx(correct.mean())
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(ccr) >= 0)


# Gallery search: mated probes' top-1 score and whether rank 1 is their own subject.
MATED = np.array([0.9, 0.7, 0.6, 0.4])
CORRECT = np.array([True, True, False, True])
NONMATED = np.array([0.8, 0.65, 0.5, 0.3])


@pytest.mark.parametrize(
    ("fpir", "threshold", "expected_dir"),
    [
        (0.25, 0.8, 1 / 4),  # k = 1: θ = 0.8, only 0.9 reaches it
        (0.5, 0.65, 2 / 4),  # k = 2: θ = 0.65: 0.9 and 0.7 (0.6 is wrong anyway)
        (0.75, 0.5, 2 / 4),  # k = 3: θ = 0.5: 0.6 reaches it but is misidentified
        (1.0, 0.3, 3 / 4),  # everything reaches 0.3, three are right
        (0.1, float(np.nextafter(0.8, 1)), 1 / 4),  # k = 0: θ just above 0.8
    ],
)
def test_dir_at_fpir_hand_worked(fpir: float, threshold: float, expected_dir: float) -> None:
    dir_, theta = dir_at_fpir(MATED, CORRECT, NONMATED, fpir)
    assert theta == threshold
    assert dir_ == pytest.approx(expected_dir)
    assert detection_rate(MATED, CORRECT, theta) == pytest.approx(expected_dir)


def test_dir_at_fpir_with_tied_nonmated_scores() -> None:
    # fpir 0.5 of [0.8, 0.8, 0.8, 0.3]: k = 2 would accept three, so θ moves above 0.8.
    nonmated = np.array([0.8, 0.8, 0.8, 0.3])
    dir_, theta = dir_at_fpir(np.array([0.8, 0.81]), np.array([True, True]), nonmated, 0.5)
    assert theta > 0.8 and realised_fpir(nonmated, theta) == 0.0
    assert dir_ == 0.5  # the probe at exactly 0.8 is no longer accepted


def test_dir_fpir_curve_hand_worked() -> None:
    fpir, dir_, thresholds = dir_fpir_curve(MATED, CORRECT, NONMATED)
    np.testing.assert_allclose(thresholds[1:], [0.8, 0.65, 0.5, 0.3])
    assert thresholds[0] == np.nextafter(0.8, 1)
    np.testing.assert_allclose(fpir, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(dir_, [0.25, 0.25, 0.5, 0.5, 0.75])


@settings(max_examples=100, deadline=None)
@given(
    mated=st.lists(st.tuples(st.sampled_from([0.1, 0.4, 0.5, 0.9]), st.booleans()), min_size=1),
    nonmated=st.lists(st.sampled_from([0.1, 0.2, 0.4, 0.5, 0.6]), min_size=1, max_size=30),
    fpir=st.floats(0.01, 1.0),
)
def test_dir_at_fpir_is_the_curve_point_below_target(
    mated: list[tuple[float, bool]], nonmated: list[float], fpir: float
) -> None:
    scores = np.array([s for s, _ in mated])
    correct = np.array([c for _, c in mated])
    curve_fpir, curve_dir, curve_thresholds = dir_fpir_curve(scores, correct, nonmated)
    best = int(np.flatnonzero(curve_fpir <= fpir)[-1])
    dir_, theta = dir_at_fpir(scores, correct, nonmated, fpir)
    assert theta == threshold_for_fpir(np.array(nonmated), fpir)
    # Same operating point: the same non-mated searches accepted...
    assert realised_fpir(np.array(nonmated), theta) == curve_fpir[best] <= fpir
    # ...though a tie can put θ just above the next lower non-mated score instead of on the
    # curve's threshold; only mated scores inside that gap could be counted differently.
    assert theta <= curve_thresholds[best]
    in_gap = (scores >= theta) & (scores < curve_thresholds[best])
    assert dir_ == pytest.approx(curve_dir[best] + np.mean(in_gap & correct))

"""T-norm with the calibration set as cohort: hand-worked statistics and the comparison rows."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import realised_fpir, threshold_for_fpir
from models.scoring import SubjectScorer
from training.normalisation import cohort_statistics, compare, normalised_top1


def test_cohort_statistics_by_hand() -> None:
    cohort = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    probe = np.array([[3.0, 4.0]])  # unit (0.6, 0.8): cohort scores 0.6, 0.8, -0.6
    mean, std = cohort_statistics(probe, cohort)
    assert mean[0] == pytest.approx(0.8 / 3)
    assert std[0] == pytest.approx(np.std([0.6, 0.8, -0.6]))
    mean, std = cohort_statistics(probe, cohort, top=2)
    assert (mean[0], std[0]) == (pytest.approx(0.7), pytest.approx(0.1))
    # The cohort against itself, each leaving itself out: row 0 scores 0 and -1.
    mean, std = cohort_statistics(cohort, cohort, leave_out_self=True)
    np.testing.assert_allclose(mean, [-0.5, 0.0, -0.5])
    np.testing.assert_allclose(std, [0.5, 0.0 + 1e-6, 0.5])  # row 1 scores 0, 0: floored


def test_normalisation_keeps_the_best_subject_and_rescales_its_score() -> None:
    rng = np.random.default_rng(0)
    gallery, cohort, probes = (rng.standard_normal((n, 8)) for n in (20, 50, 30))
    scorer = SubjectScorer(gallery, np.arange(20) % 7)
    raw = normalised_top1(scorer, probes, cohort, "raw")
    normalised = normalised_top1(scorer, probes, cohort, "tnorm")
    mean, std = cohort_statistics(probes, cohort)
    np.testing.assert_allclose(normalised, (raw - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(raw, scorer.top1(probes)[1], rtol=1e-6)
    with pytest.raises(ValueError, match="method"):
        normalised_top1(scorer, probes, cohort, "znorm")


def test_compare_rows_against_the_rule() -> None:
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((30, 8))
    subjects = np.arange(30) % 10
    mated = gallery[:10] + 0.1 * rng.standard_normal((10, 8))
    calibration, strangers = rng.standard_normal((200, 8)), rng.standard_normal((300, 8))
    rows = compare(
        gallery, subjects, mated, subjects[:10], {"s": strangers}, calibration, (0.05, 0.001)
    )
    assert [(r["method"], r["fpir"]) for r in rows] == [
        ("raw", 0.05),
        ("tnorm", 0.05),
        ("tnorm-top50", 0.05),
    ]  # 0.001 needs 10,000 searches: skipped
    scorer = SubjectScorer(gallery, subjects)
    raw_threshold = threshold_for_fpir(scorer.top1(calibration)[1].astype(np.float64), 0.05)
    assert rows[0]["threshold"] == raw_threshold
    assert rows[0]["realised_fpir"]["s"] == realised_fpir(scorer.top1(strangers)[1], raw_threshold)
    labels, scores = scorer.top1(mated)
    expected_dir = np.mean((labels == subjects[:10]) & (scores >= raw_threshold))
    assert rows[0]["dir"] == pytest.approx(expected_dir)

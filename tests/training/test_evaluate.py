import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training.calibration import SmallCalibrationWarning
from training.evaluate import evaluate_gallery, write_report

# D = 4. Gallery: subject 10 = e0, subject 20 = e1. A probe with top-1 score s against
# subject 10 is [s, 0, sqrt(1 - s^2), 0]; the 4th axis makes non-mated probes.


def towards(axis: int, score: float, spare: int = 2) -> list[float]:
    vector = [0.0] * 4
    vector[axis] = score
    vector[spare] = math.sqrt(1 - score**2)
    return vector


GALLERY = np.array([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
GALLERY_SUBJECTS = np.array([10, 20])
# Mated: top-1 scores 0.9, 0.7 (correct), 0.6 (subject 10 but closest to 20), 0.4 (correct).
MATED = [towards(0, 0.9), towards(1, 0.7), towards(1, 0.6), towards(0, 0.4)]
MATED_SUBJECTS = [10, 20, 10, 10]
UNKNOWN = [towards(0, s, spare=3) for s in (0.8, 0.65, 0.5, 0.3)]
NEGATIVE = [towards(1, s, spare=3) for s in (0.95, 0.1)]
CALIBRATION = np.array([towards(0, s, spare=3) for s in (0.85, 0.75, 0.55, 0.2)])
FPIRS = (0.25, 0.5, 0.75, 1.0)


def run(**changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "gallery_embeddings": GALLERY,
        "gallery_subjects": GALLERY_SUBJECTS,
        "probe_embeddings": np.array(MATED + UNKNOWN + NEGATIVE),
        "probe_subjects": np.array(MATED_SUBJECTS + [-1] * 6),
        "probe_kind": np.array(["mated"] * 4 + ["unknown"] * 4 + ["negative"] * 2),
        "calibration_embeddings": CALIBRATION,
        "fpirs": FPIRS,
    }
    arguments.update(changes)
    with pytest.warns(SmallCalibrationWarning):  # 4 calibration searches support no FPIR
        return evaluate_gallery(**arguments)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run()


def test_counts_and_accuracy(report: dict[str, Any]) -> None:
    assert report["counts"] == {
        "gallery_subjects": 2,
        "gallery_samples": 2,
        "mated": 4,
        "unknown": 4,
        "negative": 2,
        "calibration": 4,
    }
    assert report["closed_set_accuracy"] == 0.75


def test_open_set_metrics_by_hand(report: dict[str, Any]) -> None:
    unknown = report["open_set"]["unknown"]
    # Pairs mated > unknown: 0.9 beats 4, 0.7 beats 3, 0.6 beats 2, 0.4 beats 1 -> 10 / 16.
    assert unknown["auroc"] == pytest.approx(10 / 16)
    # 95% of 4 mated needs all four: θ = 0.4, unknowns 0.8, 0.65, 0.5 reach it.
    assert unknown["fpr_at_tpr"] == pytest.approx(0.75)
    # OSCR steps (FPR, CCR): (0, 1/4) until 0.8 -> (1/4, 1/4), 0.7 -> 1/2, 0.65 -> FPR 1/2,
    # 0.5 -> FPR 3/4, 0.4 -> CCR 3/4, 0.3 -> FPR 1: area 1/4*1/4 + 1/4*1/2 + 1/4*1/2 + 1/4*3/4
    assert unknown["oscr_area"] == pytest.approx((1 + 2 + 2 + 3) / 16)
    # Oracle DIR at FPIR on the unknowns' own scores (hand-worked in test_metrics).
    assert [row["dir"] for row in unknown["dir"]] == pytest.approx([0.25, 0.5, 0.5, 0.75])
    negative = report["open_set"]["negative"]
    # 0.9, 0.7, 0.6, 0.4 vs 0.95, 0.1: 1 + 1 + 1 + 1 of 8 pairs
    assert negative["auroc"] == pytest.approx(4 / 8)


def test_calibrated_operating_points_by_hand(report: dict[str, Any]) -> None:
    points = report["operating_points"]
    assert [p["fpir"] for p in points] == list(FPIRS)
    # Calibration top-1 scores 0.85, 0.75, 0.55, 0.2 -> θ = 0.85, 0.75, 0.55, 0.2.
    assert [p["threshold"] for p in points] == pytest.approx([0.85, 0.75, 0.55, 0.2], abs=1e-6)
    assert [p["dir"] for p in points] == pytest.approx([0.25, 0.25, 0.5, 0.75])
    realised_unknown = [p["realised_fpir"]["unknown"] for p in points]
    realised_negative = [p["realised_fpir"]["negative"] for p in points]
    assert realised_unknown == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert realised_negative == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert all(p["supported"] is False and p["searches"] == 4 for p in points)
    assert report["calibration"] == [
        {k: p[k] for k in ("fpir", "threshold", "supported", "searches")} for p in points
    ]


def test_histogram_counts_every_probe(report: dict[str, Any]) -> None:
    histogram = report["score_histogram"]
    assert len(histogram["edges"]) == 51
    assert (sum(histogram["mated"]), sum(histogram["unknown"]), sum(histogram["negative"])) == (
        4,
        4,
        2,
    )


def test_missing_kind_is_left_out() -> None:
    report = run(
        probe_embeddings=np.array(MATED + UNKNOWN),
        probe_subjects=np.array(MATED_SUBJECTS + [0] * 4),
        probe_kind=np.array(["mated"] * 4 + ["unknown"] * 4),
    )
    assert list(report["open_set"]) == ["unknown"]
    assert list(report["operating_points"][0]["realised_fpir"]) == ["unknown"]
    assert report["counts"]["negative"] == 0


def test_string_subjects_and_max_scoring() -> None:
    report = run(
        gallery_embeddings=np.vstack([GALLERY, [[0.0, 0.0, 0.0, 1.0]]]),
        gallery_subjects=np.array(["José", "Zoë", "José"]),
        probe_subjects=np.array(["José", "Zoë", "José", "José"] + ["?"] * 6),
        scoring="max",
    )
    assert report["settings"]["scoring"] == "max"
    assert report["counts"]["gallery_samples"] == 3
    # José's second sample is the unknowns' spare axis: with "max" they all score 1.0 or more.
    assert report["open_set"]["unknown"]["auroc"] < 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"probe_kind": np.array(["mated"] * 4 + ["unknown"] * 4 + ["other"] * 2)}, "other"),
        ({"probe_kind": np.array(["unknown"] * 10)}, "no mated probe"),
        # labels of another type never match silently
        ({"probe_subjects": np.array(["10", "20", "10", "10"] + ["-1"] * 6)}, "not in the gallery"),
        (
            {"probe_kind": np.array(["mated"] * 4 + ["mated"] * 6), "probe_subjects": [10] * 10},
            "no non-mated probe",
        ),
        ({"probe_subjects": np.array([10] * 9)}, "same length"),
        ({"probe_subjects": np.array([30, 20, 10, 10] + [-1] * 6)}, r"not in the gallery.*30"),
        ({"calibration_embeddings": np.ones((3, 5))}, "dimension 5, the gallery 4"),
    ],
)
def test_bad_input(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "gallery_embeddings": GALLERY,
        "gallery_subjects": GALLERY_SUBJECTS,
        "probe_embeddings": np.array(MATED + UNKNOWN + NEGATIVE),
        "probe_subjects": np.array(MATED_SUBJECTS + [-1] * 6),
        "probe_kind": np.array(["mated"] * 4 + ["unknown"] * 4 + ["negative"] * 2),
        "calibration_embeddings": CALIBRATION,
        "fpirs": FPIRS,
        **changes,
    }
    with pytest.raises(ValueError, match=message):
        evaluate_gallery(**arguments)


def test_write_report(report: dict[str, Any], tmp_path: Path) -> None:
    paths = write_report(report, tmp_path / "eval")
    assert set(paths) == {"json", "markdown", "dir_fpir", "scores", "oscr"}
    assert json.loads(paths["json"].read_text()) == report
    for name in ("dir_fpir", "scores", "oscr"):
        with Image.open(paths[name]) as image:
            assert image.format == "PNG" and image.size == (600, 400)
    markdown = paths["markdown"].read_text()
    assert "| 0.25 * | 0.8500 | 0.2500 | 0.0000 | 0.5000 |" in markdown
    assert "| unknown | 0.6250 | 0.7500 | 0.5000 |" in markdown
    assert "![DIR vs FPIR](dir_fpir.png)" in markdown


def test_realistic_report_end_to_end(tmp_path: Path) -> None:
    # 20 subjects in 16-D, mated probes near their subject, unknowns anywhere.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    gallery = np.repeat(centres, 3, axis=0) + 0.3 * rng.standard_normal((60, 16))
    subjects = np.repeat(np.arange(20), 3)
    mated_subjects = rng.integers(0, 20, size=400)
    mated = centres[mated_subjects] + 0.3 * rng.standard_normal((400, 16))
    unknown = rng.standard_normal((1500, 16))
    negative = rng.standard_normal((500, 16))
    calibration = rng.standard_normal((3000, 16))
    report = evaluate_gallery(
        gallery,
        subjects,
        np.vstack([mated, unknown, negative]),
        np.r_[mated_subjects, np.full(2000, -1)],
        np.array(["mated"] * 400 + ["unknown"] * 1500 + ["negative"] * 500),
        calibration,
        fpirs=(1e-2, 1e-1, 1.0),
    )
    assert report["closed_set_accuracy"] > 0.95
    assert report["open_set"]["unknown"]["auroc"] > 0.95
    # Unknowns, negatives and calibration come from one distribution: the realised FPIR on
    # held-out unknowns lands near the target (binomial noise: 1500 x 0.1 = 150 +- 12).
    point = report["operating_points"][1]
    assert point["fpir"] == 0.1 and point["supported"]
    assert abs(point["realised_fpir"]["unknown"] - 0.1) < 0.03
    paths = write_report(report, tmp_path)
    assert paths["json"].stat().st_size > 0

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from models.bundle import Manifest
from models.calibration import realised_fpir
from models.scoring import SubjectScorer
from models.testing import make_random_bundle
from training.calibration import SmallCalibrationWarning, calibrate_gallery, calibration_table


def test_calibration_table_by_hand_marks_small_samples() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    with pytest.warns(
        SmallCalibrationWarning,
        match=r"4 non-mated searches, too few for FPIR 1 \(needs 10/1 = 10\), "
        r"FPIR 0\.5 \(needs 10/0\.5 = 20\), FPIR 0\.25 \(needs 10/0\.25 = 40\)",
    ):
        rows = calibration_table(scores, fpirs=(0.5, 0.25, 1.0))
    assert rows == [
        {"fpir": 0.25, "threshold": 0.9, "supported": False, "searches": 4},
        {"fpir": 0.5, "threshold": float(np.nextafter(0.8, 1)), "supported": False, "searches": 4},
        # 10/1.0 = 10 searches needed, 4 available
        {"fpir": 1.0, "threshold": 0.7, "supported": False, "searches": 4},
    ]


def test_calibration_table_supported_rows_do_not_warn() -> None:
    scores = np.linspace(0, 1, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = calibration_table(scores, fpirs=(0.1, 1.0))
    assert [row["supported"] for row in rows] == [True, True]
    assert rows[0]["threshold"] == scores[-10]  # the 10th largest of 100


def test_calibration_table_needs_a_target() -> None:
    with pytest.raises(ValueError, match="no target FPIR"):
        calibration_table([0.1], fpirs=())


def test_rows_fit_the_manifest(tmp_path: Path) -> None:
    bundle = make_random_bundle(tmp_path / "b", calibration_size=5)
    with pytest.warns(SmallCalibrationWarning):
        rows = calibration_table(np.array([0.3, 0.2, 0.1]))
    manifest = dataclasses.replace(bundle.manifest, calibration=rows)
    assert Manifest.from_dict(manifest.to_dict()).calibration == rows


def test_calibrate_gallery_keeps_fpir_on_its_own_set() -> None:
    rng = np.random.default_rng(1)
    gallery = SubjectScorer(rng.standard_normal((30, 8)), np.arange(30) % 10)
    calibration = rng.standard_normal((2000, 8))
    rows = calibrate_gallery(calibration, gallery, fpirs=(0.01, 0.1, 0.5, 1.0))
    _, own_scores = gallery.top1(calibration)
    for row in rows:
        realised = realised_fpir(own_scores, row["threshold"])
        assert realised <= row["fpir"]
        # distinct scores: exactly floor(fpir * M) accepted
        assert realised == pytest.approx(math.floor(row["fpir"] * 2000) / 2000)

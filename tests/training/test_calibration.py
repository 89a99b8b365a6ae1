import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

import training.calibration as calibration_module
from models.bundle import Manifest
from models.calibration import realised_fpir
from models.testing import make_random_bundle
from training.calibration import (
    Gallery,
    SmallCalibrationWarning,
    calibrate_gallery,
    calibration_table,
    l2_normalise,
)


def test_l2_normalise() -> None:
    np.testing.assert_allclose(l2_normalise([[3.0, 4.0], [0.0, -2.0]]), [[0.6, 0.8], [0, -1]])
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        l2_normalise([[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(
        l2_normalise([[0.0, 2.0], [0.0, 0.0]], allow_zero=True), [[0, 1], [0, 0]]
    )
    with pytest.raises(ValueError, match="NaN"):
        l2_normalise([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        l2_normalise([1.0, 2.0])


# Subject "a" has samples e0 and e1, subject "b" has -e0 (D = 2).
GALLERY = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
SUBJECTS = np.array(["b", "a", "a"])[[1, 2, 0]]  # ["a", "a", "b"], written out of order


def test_mean_template_scores_by_hand() -> None:
    gallery = Gallery(GALLERY, ["a", "a", "b"], template="mean")
    assert gallery.subjects.tolist() == ["a", "b"]
    # template a = (e0 + e1)/sqrt(2); probe e0 -> 1/sqrt(2) vs a, -1 vs b.
    np.testing.assert_allclose(gallery.scores([[5.0, 0.0]]), [[1 / math.sqrt(2), -1.0]], atol=1e-6)
    labels, scores = gallery.top1([[5.0, 0.0], [-1.0, 0.1]])
    assert labels.tolist() == ["a", "b"]
    np.testing.assert_allclose(scores, [1 / math.sqrt(2), 1 / math.sqrt(1.01)], atol=1e-6)


def test_max_template_scores_by_hand() -> None:
    gallery = Gallery(GALLERY, ["a", "a", "b"], template="max")
    # best sample of a for probe e0 is e0 itself.
    np.testing.assert_allclose(gallery.scores([[5.0, 0.0]]), [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(gallery.scores([[0.0, 1.0]]), [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("template", ["mean", "max"])
def test_chunked_scores_match_brute_force(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration_module, "_CHUNK", 3)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((20, 5))
    subjects = rng.integers(0, 6, size=20)
    probes = rng.standard_normal((10, 5))
    gallery = Gallery(samples, subjects, template=template)  # type: ignore[arg-type]
    unit = samples / np.linalg.norm(samples, axis=1, keepdims=True)
    unit_probes = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    expected = np.empty((10, gallery.subjects.size))
    for j, subject in enumerate(gallery.subjects):
        mine = unit[subjects == subject]
        if template == "mean":
            vector = mine.mean(axis=0)
            expected[:, j] = unit_probes @ (vector / np.linalg.norm(vector))
        else:
            expected[:, j] = (unit_probes @ mine.T).max(axis=1)
    np.testing.assert_allclose(gallery.scores(probes), expected, atol=1e-5)


def test_zero_probe_scores_zero_but_zero_gallery_sample_is_refused() -> None:
    gallery = Gallery(GALLERY, ["a", "a", "b"])
    np.testing.assert_array_equal(gallery.scores([[0.0, 0.0]]), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="gallery embeddings: row 1 is all zeros"):
        Gallery([[1.0, 0.0], [0.0, 0.0]], ["a", "b"])


def test_gallery_errors() -> None:
    with pytest.raises(ValueError, match="template"):
        Gallery(GALLERY, ["a", "a", "b"], template="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"subjects must have shape \[3\]"):
        Gallery(GALLERY, ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        Gallery(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match="dimension 3, the gallery 2"):
        Gallery(GALLERY, ["a", "a", "b"]).scores(np.ones((1, 3)))


def test_calibration_table_by_hand_marks_small_samples() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    with pytest.warns(
        SmallCalibrationWarning, match=r"4 non-mated searches; FPIR \[0\.25, 0\.5, 1\.0\].*up to 40"
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
    gallery = Gallery(rng.standard_normal((30, 8)), np.arange(30) % 10)
    calibration = rng.standard_normal((2000, 8))
    rows = calibrate_gallery(calibration, gallery, fpirs=(0.01, 0.1, 0.5, 1.0))
    _, own_scores = gallery.top1(calibration)
    for row in rows:
        realised = realised_fpir(own_scores, row["threshold"])
        assert realised <= row["fpir"]
        # distinct scores: exactly floor(fpir * M) accepted
        assert realised == pytest.approx(math.floor(row["fpir"] * 2000) / 2000)

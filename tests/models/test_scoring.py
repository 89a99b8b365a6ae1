import math

import numpy as np
import pytest

import models.scoring as scoring_module
from models.scoring import SubjectScorer, decide, l2_normalise


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


def test_mean_scores_by_hand() -> None:
    gallery = SubjectScorer(GALLERY, ["a", "a", "b"], scoring="mean")
    assert gallery.subjects.tolist() == ["a", "b"]
    # template a = (e0 + e1)/sqrt(2); probe e0 -> 1/sqrt(2) vs a, -1 vs b.
    np.testing.assert_allclose(gallery.scores([[5.0, 0.0]]), [[1 / math.sqrt(2), -1.0]], atol=1e-6)
    labels, scores = gallery.top1([[5.0, 0.0], [-1.0, 0.1]])
    assert labels.tolist() == ["a", "b"]
    np.testing.assert_allclose(scores, [1 / math.sqrt(2), 1 / math.sqrt(1.01)], atol=1e-6)


def test_max_scores_by_hand() -> None:
    gallery = SubjectScorer(GALLERY, ["a", "a", "b"], scoring="max")
    # best sample of a for probe e0 is e0 itself.
    np.testing.assert_allclose(gallery.scores([[5.0, 0.0]]), [[1.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(gallery.scores([[0.0, 1.0]]), [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("scoring", ["mean", "max"])
def test_chunked_scores_match_brute_force(scoring: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring_module, "_CHUNK", 3)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((20, 5))
    subjects = rng.integers(0, 6, size=20)
    probes = rng.standard_normal((10, 5))
    gallery = SubjectScorer(samples, subjects, scoring=scoring)  # type: ignore[arg-type]
    unit = samples / np.linalg.norm(samples, axis=1, keepdims=True)
    unit_probes = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    expected = np.empty((10, gallery.subjects.size))
    for j, subject in enumerate(gallery.subjects):
        mine = unit[subjects == subject]
        if scoring == "mean":
            vector = mine.mean(axis=0)
            expected[:, j] = unit_probes @ (vector / np.linalg.norm(vector))
        else:
            expected[:, j] = (unit_probes @ mine.T).max(axis=1)
    np.testing.assert_allclose(gallery.scores(probes), expected, atol=1e-5)


def test_zero_probe_scores_zero_but_zero_gallery_sample_is_refused() -> None:
    gallery = SubjectScorer(GALLERY, ["a", "a", "b"])
    np.testing.assert_array_equal(gallery.scores([[0.0, 0.0]]), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="gallery embeddings: row 1 is all zeros"):
        SubjectScorer([[1.0, 0.0], [0.0, 0.0]], ["a", "b"])


def test_gallery_errors() -> None:
    with pytest.raises(ValueError, match="scoring"):
        SubjectScorer(GALLERY, ["a", "a", "b"], scoring="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"subjects must have shape \[3\]"):
        SubjectScorer(GALLERY, ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        SubjectScorer(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match="dimension 3, the gallery 2"):
        SubjectScorer(GALLERY, ["a", "a", "b"]).scores(np.ones((1, 3)))


def test_top_k_orders_by_score_and_breaks_ties_by_subject_order() -> None:
    # b and c tie on the probe; a scores below both.
    scorer = SubjectScorer([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], ["a", "c", "b"])
    labels, scores = scorer.top_k([[1.0, 0.0]], 5)
    assert labels.tolist() == [["b", "c", "a"]]
    np.testing.assert_allclose(scores, [[1.0, 1.0, 0.0]], atol=1e-7)
    assert scorer.top1([[1.0, 0.0]])[0].tolist() == ["b"]


def test_decide_accepts_at_the_threshold() -> None:
    assert decide(0.5, 0.5)
    assert not decide(float(np.nextafter(np.float32(0.5), np.float32(0))), 0.5)

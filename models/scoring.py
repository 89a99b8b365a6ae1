"""How a probe is scored against a gallery: the one rule that training and service share.

A probe's score against a subject is the cosine between L2-normalised embeddings, either
against the subject's best sample (``scoring="max"``, the default) or against its *template*,
the mean of its normalised samples, renormalised (``scoring="mean"``). The top-1 subject is
the best-scoring one; on an exact tie, the first in sorted subject order.

Training evaluates galleries with :class:`SubjectScorer` (brute force, numpy); the service
searches with its index (FAISS or another backend) and is tested to give the same scores and
decisions as this module on the same embeddings.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

Scoring = Literal["max", "mean"]
SCORING_RULES: tuple[str, ...] = get_args(Scoring)
DEFAULT_SCORING: Scoring = "max"
_CHUNK = 2048  # probes scored at once: bounds memory to chunk x gallery samples


class EmbeddingError(ValueError):
    """Embeddings that cannot be scored: not 2-D, not finite, or a zero row."""


def check_scoring(scoring: Any) -> Scoring:
    if scoring not in SCORING_RULES:
        raise ValueError(f"scoring must be one of {list(SCORING_RULES)}, got {scoring!r}")
    return scoring


def l2_normalise(
    embeddings: Any, what: str = "embeddings", *, allow_zero: bool = False
) -> np.ndarray:
    """Rows scaled to unit length (float32, computed in float64); EmbeddingError otherwise.

    An all-zero row is an EmbeddingError, or stays zero with ``allow_zero`` (a probe embedding
    of zero, e.g. from a ReLU network or ObjectoSphere training, then scores 0 everywhere).
    """
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise EmbeddingError(f"{what} must be a 2-D array [N, D], got shape {list(array.shape)}")
    squares = np.einsum("ij,ij->i", array, array)
    bad = ~(np.isfinite(squares) & (squares > 0))  # NaN, infinite or overflowing, or zero
    if bad.any():
        if not np.isfinite(array).all():
            raise EmbeddingError(f"{what} are not finite (NaN or infinite values)")
        if not allow_zero:
            where = "" if array.shape[0] == 1 else f": row {int(np.flatnonzero(bad)[0])}"
            raise EmbeddingError(f"{what}{where} is all zeros (or its norm overflows)")
    norms = np.where(bad, np.inf, np.sqrt(squares))
    return (array / norms[:, None]).astype(np.float32)


class SubjectScorer:
    """Enrolled samples grouped by subject, scored exactly by cosine similarity.

    ``subjects`` holds the distinct subject labels in sorted order; score matrices have one
    column per subject in that order.
    """

    def __init__(self, embeddings: Any, subjects: Any, scoring: Scoring = DEFAULT_SCORING):
        self.scoring = check_scoring(scoring)
        samples = l2_normalise(embeddings, "gallery embeddings")
        labels = np.asarray(subjects)
        if labels.shape != (samples.shape[0],):
            raise ValueError(
                f"gallery subjects must have shape [{samples.shape[0]}] (one per embedding), "
                f"got {list(labels.shape)}"
            )
        if samples.shape[0] == 0:
            raise ValueError("the gallery is empty")
        self.subjects, subject_index = np.unique(labels, return_inverse=True)
        self.dim = samples.shape[1]
        self.num_samples = samples.shape[0]
        if scoring == "mean":
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
            raise EmbeddingError(
                f"probe embeddings have dimension {unit.shape[1]}, the gallery {self.dim}"
            )
        out = np.empty((unit.shape[0], self.subjects.size), dtype=np.float32)
        for start in range(0, unit.shape[0], _CHUNK):
            chunk = unit[start : start + _CHUNK] @ self._vectors.T
            if self._starts is not None:
                chunk = np.maximum.reduceat(chunk, self._starts, axis=1)
            out[start : start + _CHUNK] = chunk
        return out

    def top_k(self, probes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(subject labels [P, k'], scores [P, k']) best first, k' = min(k, subjects).

        Ties keep sorted subject order (a stable sort of the negated scores).
        """
        scores = self.scores(probes)
        k = min(int(k), self.subjects.size)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return self.subjects[order], np.take_along_axis(scores, order, axis=1)

    def top1(self, probes: Any) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 subject label, top-1 score) per probe."""
        labels, scores = self.top_k(probes, 1)
        return labels[:, 0], scores[:, 0]


def decide(score: float, threshold: float) -> bool:
    """The decision rule: a probe is "known" when its top score reaches the threshold."""
    return score >= threshold

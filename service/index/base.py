"""The subject-level search protocol that every vector backend implements.

A gallery's index answers in subjects, never in samples: the top-k subjects with their score
under the gallery's scoring rule (models.scoring: "max" over a subject's samples or its "mean"
template), exactly as :class:`models.scoring.SubjectScorer` would. The database is the source
of truth; an index is derived from it and rebuilt at start. Implementations are thread-safe:
searches run concurrently, mutations are serialised by the caller per gallery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Candidate:
    subject_id: str
    score: float


@dataclass(frozen=True)
class IndexContents:
    """What an index is built from: the samples of one gallery embedded by one model."""

    sample_ids: np.ndarray  # int64 [N]
    subject_pks: np.ndarray  # int64 [N]
    vectors: np.ndarray  # float32 [N, D], L2-normalised
    subjects: dict[int, str] = field(default_factory=dict)  # pk -> subject_id (all subjects)

    @classmethod
    def empty(cls, dim: int) -> IndexContents:
        return cls(
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros((0, dim), dtype=np.float32),
        )


def distinct_subjects(hits: Iterable[tuple[int, float]], top_k: int) -> list[tuple[int, float]]:
    """The first `top_k` distinct subjects of (subject pk, score) sample hits, best first.

    With "max" scoring a subject's first hit is its best sample, so this is exact as long as
    the hits reach `top_k` subjects; a backend widens its search until they do.
    """
    seen: set[int] = set()
    found: list[tuple[int, float]] = []
    for pk, score in hits:
        if pk in seen:
            continue
        seen.add(pk)
        found.append((pk, score))
        if len(found) == top_k:
            break
    return found


class SubjectSearch(Protocol):
    """One gallery's index for one model."""

    dim: int
    scoring: str

    @property
    def subject_count(self) -> int: ...

    @property
    def sample_count(self) -> int: ...

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Per query, up to `top_k` subjects, best first, each subject once."""

    def subject_vectors(self, subject_id: str) -> np.ndarray | None:
        """What a subject is scored against, float32 [n, D]: its samples ("max") or its
        template ([1, D], "mean"); None if it has no samples."""

    def subject_scores(self, queries: np.ndarray, subject_id: str) -> np.ndarray | None:
        """Scores of `queries` against one subject (float64 [Q]); None if it has no samples."""

    def set_subject(self, pk: int, subject_id: str) -> None: ...

    def add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> None: ...

    def add_many(
        self,
        subject_pks: np.ndarray,
        subject_ids: list[str],
        sample_ids: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        """Samples of many subjects in one step (bulk enrolment): sample i belongs to the
        subject `subject_pks[i]`, named `subject_ids[i]`."""

    def remove_samples(self, sample_ids: np.ndarray) -> None: ...

    def remove_subject(self, pk: int, sample_ids: np.ndarray) -> None: ...


class IndexBackend(Protocol):
    """Makes the indexes of one kind (chosen by OPENGALLERY_INDEX_URL)."""

    name: str

    def build(
        self,
        dim: int,
        scoring: str,
        contents: IndexContents,
        *,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> SubjectSearch:
        """The index of `contents`. `gallery` and `model_id` name it where the backend keeps
        indexes outside the process (a Milvus collection per gallery and model)."""


@dataclass(frozen=True)
class Snapshot:
    """A saved index as loaded, with the arrays its saver attached to it (saved at the same
    version: the calibration's kept scores against this index)."""

    index: SubjectSearch
    attached: dict[str, np.ndarray] = field(default_factory=dict)


class SnapshotBackend(Protocol):
    """What a backend offers if it can save its indexes and load them at the next start
    (optional: the service looks for these methods). A snapshot is keyed by the gallery, the
    model and the database's gallery version: one saved at another version is stale, is
    removed, and the index is rebuilt from the database."""

    def load_snapshot(
        self, gallery: str, model_id: str, version: int, dim: int, scoring: str
    ) -> Snapshot | None: ...

    def save_snapshot(
        self,
        index: SubjectSearch,
        gallery: str,
        model_id: str,
        version: int,
        attached: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Save `index` with `attached` (arrays that describe the same version of it)."""

    def retain_snapshots(self, kept: set[tuple[str, str]]) -> None:
        """Remove the snapshots of every other (gallery, model) pair."""


class IndexConfigError(ValueError):
    """An index URL this build cannot serve."""


class IndexUnavailable(RuntimeError):
    """The index server cannot be reached or failed; the message names it without
    credentials."""

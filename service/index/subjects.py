"""Subject-level search over a `VectorIndex`: candidates are subjects, never duplicated.

Two scoring rules, a gallery setting:
- "max": a subject's score is the best cosine over its samples; the index holds samples and a
  search widens until it has `top_k` distinct subjects (exact: a subject's best sample is met
  before any of its others).
- "mean": a subject's score is the cosine with its template, the L2-normalised mean of its
  samples; the index holds one template per subject.

Thread safety: searches share a read lock; mutations take the write lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from service.index.base import VectorIndex
from service.index.flat import FlatIPIndex

SCORING_RULES = ("max", "mean")


class RWLock:
    """Many readers or one writer; waiting writers block new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._condition:
            while self._writer or self._waiting_writers:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._condition:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


def _normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)


class SubjectIndex:
    """The in-memory index of one gallery for one model; `version` is the gallery version it
    reflects (the store's counter), so caches can key on it."""

    def __init__(
        self,
        dim: int,
        scoring: str,
        index_factory: Callable[[int], VectorIndex] = FlatIPIndex,
    ) -> None:
        if scoring not in SCORING_RULES:
            raise ValueError(f"scoring must be one of {SCORING_RULES}, got {scoring!r}")
        self.dim = dim
        self.scoring = scoring
        self.version = 0
        self.lock = RWLock()
        self._vectors = index_factory(dim)
        self._sample_subject: dict[int, int] = {}
        self._subject_samples: dict[int, set[int]] = {}
        self._subject_names: dict[int, str] = {}
        self._subject_pks: dict[str, int] = {}
        # "mean" only: per-sample vectors and per-subject sums, to update templates.
        self._sample_vectors: dict[int, np.ndarray] = {}
        self._subject_sums: dict[int, np.ndarray] = {}

    # -- reading --
    @property
    def sample_count(self) -> int:
        return len(self._sample_subject)

    @property
    def subject_count(self) -> int:
        return len(self._subject_names)

    def subject_id(self, pk: int) -> str:
        return self._subject_names[pk]

    def sample_ids(self) -> np.ndarray:
        return np.array(sorted(self._sample_subject), dtype=np.int64)

    def search(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """Per query, up to `top_k` (subject_id, score) pairs, best first, one per subject."""
        with self.lock.read():
            return [
                [(self._subject_names[pk], score) for pk, score in row]
                for row in self._search_pks(queries, top_k)
            ]

    def top1_scores(self, queries: np.ndarray) -> np.ndarray:
        """Best subject score per query (float64 [Q]); -inf for an empty gallery."""
        with self.lock.read():
            scores, ids = self._vectors.search(queries, 1)
            result = np.full(len(queries), -np.inf, dtype=np.float64)
            found = ids[:, 0] >= 0 if len(queries) else np.zeros(0, dtype=bool)
            result[found] = scores[found, 0]
            return result

    def subject_scores(self, queries: np.ndarray, subject_id: str) -> np.ndarray | None:
        """Scores of `queries` against one subject (float64 [Q]); None if it has no samples."""
        with self.lock.read():
            pk = self._subject_pks.get(subject_id)
            if pk is None or not self._subject_samples.get(pk):
                return None
            if self.scoring == "mean":
                template = _normalised(self._subject_sums[pk])
                return (queries @ template).astype(np.float64)
            vectors = self._vectors.reconstruct(np.array(sorted(self._subject_samples[pk])))
            return (queries @ vectors.T).max(axis=1).astype(np.float64)

    def _search_pks(self, queries: np.ndarray, top_k: int) -> list[list[tuple[int, float]]]:
        total = len(self._vectors)
        if total == 0 or top_k <= 0:
            return [[] for _ in range(len(queries))]
        if self.scoring == "mean":
            scores, ids = self._vectors.search(queries, min(top_k, total))
            return [
                [(int(i), float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0]
                for srow, irow in zip(scores, ids, strict=True)
            ]
        k = min(total, max(2 * top_k, top_k + 8))
        while True:
            scores, ids = self._vectors.search(queries, k)
            rows: list[list[tuple[int, float]]] = []
            complete = True
            for srow, irow in zip(scores, ids, strict=True):
                seen: set[int] = set()
                row: list[tuple[int, float]] = []
                for score, sample_id in zip(srow, irow, strict=True):
                    if sample_id < 0:
                        break
                    pk = self._sample_subject[int(sample_id)]
                    if pk in seen:
                        continue
                    seen.add(pk)
                    row.append((pk, float(score)))
                    if len(row) == top_k:
                        break
                if len(row) < top_k and k < total:
                    complete = False
                    break
                rows.append(row)
            if complete:
                return rows
            k = min(total, 4 * k)

    # -- mutating (the caller has committed the change to the store first) --
    def set_subject(self, pk: int, subject_id: str, version: int) -> None:
        with self.lock.write():
            self._subject_names[pk] = subject_id
            self._subject_pks[subject_id] = pk
            self._subject_samples.setdefault(pk, set())
            self.version = max(self.version, version)

    def add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray, version: int
    ) -> None:
        with self.lock.write():
            self._add_samples(pk, subject_id, sample_ids, vectors)
            self.version = max(self.version, version)

    def _add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        self._subject_names[pk] = subject_id
        self._subject_pks[subject_id] = pk
        members = self._subject_samples.setdefault(pk, set())
        fresh = [i for i, sid in enumerate(sample_ids) if int(sid) not in self._sample_subject]
        if not fresh:
            return
        sample_ids = np.asarray(sample_ids, dtype=np.int64)[fresh]
        vectors = np.asarray(vectors, dtype=np.float32)[fresh]
        for sample_id in sample_ids:
            self._sample_subject[int(sample_id)] = pk
            members.add(int(sample_id))
        if self.scoring == "max":
            self._vectors.add(sample_ids, vectors)
            return
        for sample_id, vector in zip(sample_ids, vectors, strict=True):
            self._sample_vectors[int(sample_id)] = vector
        self._subject_sums[pk] = self._subject_sums.get(pk, 0) + vectors.sum(axis=0)
        self._refresh_template(pk)

    def _refresh_template(self, pk: int) -> None:
        self._vectors.remove(np.array([pk], dtype=np.int64))
        if self._subject_samples.get(pk):
            template = _normalised(self._subject_sums[pk])
            self._vectors.add(np.array([pk], dtype=np.int64), template[None, :])

    def remove_samples(self, sample_ids: np.ndarray, version: int) -> None:
        with self.lock.write():
            touched: set[int] = set()
            present = [int(s) for s in sample_ids if int(s) in self._sample_subject]
            for sample_id in present:
                pk = self._sample_subject.pop(sample_id)
                self._subject_samples[pk].discard(sample_id)
                touched.add(pk)
                if self.scoring == "mean":
                    self._subject_sums[pk] = self._subject_sums[pk] - self._sample_vectors.pop(
                        sample_id
                    )
            if self.scoring == "max":
                self._vectors.remove(np.array(present, dtype=np.int64))
            else:
                for pk in touched:
                    self._refresh_template(pk)
            self.version = max(self.version, version)

    def remove_subject(self, pk: int, sample_ids: np.ndarray, version: int) -> None:
        self.remove_samples(sample_ids, version)
        with self.lock.write():
            name = self._subject_names.pop(pk, None)
            if name is not None:
                self._subject_pks.pop(name, None)
            self._subject_samples.pop(pk, None)
            self._subject_sums.pop(pk, None)
            if self.scoring == "mean":
                self._vectors.remove(np.array([pk], dtype=np.int64))

    @classmethod
    def build(
        cls,
        dim: int,
        scoring: str,
        sample_ids: np.ndarray,
        subject_pks: np.ndarray,
        vectors: np.ndarray,
        subjects: dict[int, str],
        version: int,
        index_factory: Callable[[int], VectorIndex] = FlatIPIndex,
    ) -> SubjectIndex:
        index = cls(dim, scoring, index_factory)
        index._subject_names = dict(subjects)
        index._subject_pks = {name: pk for pk, name in subjects.items()}
        for pk in subjects:
            index._subject_samples[pk] = set()
        if len(sample_ids):
            if scoring == "max":
                index._vectors.add(sample_ids, vectors)
                index._sample_subject = dict(
                    zip(sample_ids.tolist(), subject_pks.tolist(), strict=True)
                )
                for sample_id, pk in index._sample_subject.items():
                    index._subject_samples[pk].add(sample_id)
            else:
                order = np.argsort(subject_pks, kind="stable")
                pks_sorted = subject_pks[order]
                boundaries = np.flatnonzero(np.diff(pks_sorted)) + 1
                for group in np.split(order, boundaries):
                    pk = int(subject_pks[group[0]])
                    index._add_samples(pk, subjects[pk], sample_ids[group], vectors[group])
        index.version = version
        return index

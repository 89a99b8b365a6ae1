"""In-process exact search with FAISS (`IndexFlatIP` behind an id map): the default backend.

- "max": the FAISS index holds samples; a search widens until it has `top_k` distinct
  subjects (exact: a subject's best sample is met before any of its others).
- "mean": the FAISS index holds one template per subject, the L2-normalised sum of its
  samples, updated as samples come and go.

Searches share a read lock; mutations take the write lock.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

from models.scoring import check_scoring, l2_normalise
from service.index.base import Candidate, IndexContents, distinct_subjects
from service.index.locks import RWLock

_search_threads = 1
_applied = threading.local()


def set_search_threads(threads: int) -> None:
    """The OpenMP thread count of every FAISS search from now on, in any thread."""
    global _search_threads
    _search_threads = threads
    _apply_search_threads()


def _apply_search_threads() -> None:
    # omp_set_num_threads only sets the *calling* thread's count: each worker thread that
    # searches must set it itself, or it searches with every core and the idle OpenMP threads
    # spin (measured: 1.8 instead of 1.05 ms of server CPU per probe at 100k).
    if getattr(_applied, "threads", None) != _search_threads:
        faiss.omp_set_num_threads(_search_threads)
        _applied.threads = _search_threads


def _template(summed: np.ndarray) -> np.ndarray:
    """A "mean" subject's template: its samples' sum, normalised (zero if they cancel out)."""
    return l2_normalise(summed[None, :], "template", allow_zero=True)[0]


class FlatIP:
    """Brute-force exact inner-product search over the caller's int64 ids."""

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        # IndexIDMap2 keeps an id -> row map, so that vectors can be reconstructed by id.
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def _vectors(self, vectors: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [N, {self.dim}], got {list(array.shape)}")
        return array

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = self._vectors(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (vectors.shape[0],):
            raise ValueError("one id per vector")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: scores float32 [Q, k] descending, ids int64 [Q, k] (-1 where fewer)."""
        queries = self._vectors(queries)
        if k <= 0 or self._index.ntotal == 0:
            return (
                np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                np.full((len(queries), max(k, 0)), -1, dtype=np.int64),
            )
        _apply_search_threads()
        return self._index.search(queries, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def __len__(self) -> int:
        return int(self._index.ntotal)


class FaissSubjectIndex:
    """One gallery's index for one model, in process memory (implements SubjectSearch)."""

    def __init__(self, dim: int, scoring: str) -> None:
        self.dim = dim
        self.scoring = check_scoring(scoring)
        self._lock = RWLock()
        self._vectors = FlatIP(dim)
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

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        with self._lock.read():
            return [
                [Candidate(self._subject_names[pk], score) for pk, score in row]
                for row in self._search_pks(queries, top_k)
            ]

    def subject_vectors(self, subject_id: str) -> np.ndarray | None:
        with self._lock.read():
            pk = self._subject_pks.get(subject_id)
            if pk is None or not self._subject_samples.get(pk):
                return None
            if self.scoring == "mean":
                return _template(self._subject_sums[pk])[None, :]
            return self._vectors.reconstruct(np.array(sorted(self._subject_samples[pk])))

    def subject_scores(self, queries: np.ndarray, subject_id: str) -> np.ndarray | None:
        with self._lock.read():
            pk = self._subject_pks.get(subject_id)
            if pk is None or not self._subject_samples.get(pk):
                return None
            if self.scoring == "mean":
                template = _template(self._subject_sums[pk])
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
                hits = (
                    (self._sample_subject[int(sample_id)], float(score))
                    for score, sample_id in zip(srow, irow, strict=True)
                    if sample_id >= 0
                )
                row = distinct_subjects(hits, top_k)
                if len(row) < top_k and k < total:
                    complete = False
                    break
                rows.append(row)
            if complete:
                return rows
            k = min(total, 4 * k)

    # -- mutating (the caller has committed the change to the store first) --
    def set_subject(self, pk: int, subject_id: str) -> None:
        with self._lock.write():
            self._subject_names[pk] = subject_id
            self._subject_pks[subject_id] = pk
            self._subject_samples.setdefault(pk, set())

    def add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        with self._lock.write():
            self._add_samples(pk, subject_id, sample_ids, vectors)

    def add_many(
        self,
        subject_pks: np.ndarray,
        subject_ids: list[str],
        sample_ids: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        subject_pks = np.asarray(subject_pks, dtype=np.int64)
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        with self._lock.write():
            if self.scoring == "mean":  # each touched template is recomputed once
                order = np.argsort(subject_pks, kind="stable")
                boundaries = np.flatnonzero(np.diff(subject_pks[order])) + 1
                for group in np.split(order, boundaries):
                    if len(group):
                        pk = int(subject_pks[group[0]])
                        name = subject_ids[group[0]]
                        self._add_samples(pk, name, sample_ids[group], vectors[group])
                return
            for pk, name in zip(subject_pks.tolist(), subject_ids, strict=True):
                self._subject_names[pk] = name
                self._subject_pks[name] = pk
                self._subject_samples.setdefault(pk, set())
            fresh = []
            pairs = zip(subject_pks.tolist(), sample_ids.tolist(), strict=True)
            for i, (pk, sample_id) in enumerate(pairs):
                if sample_id not in self._sample_subject:
                    self._sample_subject[sample_id] = pk
                    self._subject_samples[pk].add(sample_id)
                    fresh.append(i)
            if fresh:
                self._vectors.add(sample_ids[fresh], np.asarray(vectors, dtype=np.float32)[fresh])

    def _add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> bool:
        self._subject_names[pk] = subject_id
        self._subject_pks[subject_id] = pk
        members = self._subject_samples.setdefault(pk, set())
        fresh = [i for i, sid in enumerate(sample_ids) if int(sid) not in self._sample_subject]
        if not fresh:
            return False
        sample_ids = np.asarray(sample_ids, dtype=np.int64)[fresh]
        vectors = np.asarray(vectors, dtype=np.float32)[fresh]
        for sample_id in sample_ids:
            self._sample_subject[int(sample_id)] = pk
            members.add(int(sample_id))
        if self.scoring == "max":
            self._vectors.add(sample_ids, vectors)
            return True
        for sample_id, vector in zip(sample_ids, vectors, strict=True):
            self._sample_vectors[int(sample_id)] = vector
        self._subject_sums[pk] = self._subject_sums.get(pk, 0) + vectors.sum(axis=0)
        self._refresh_template(pk)
        return True

    def _refresh_template(self, pk: int) -> None:
        self._vectors.remove(np.array([pk], dtype=np.int64))
        if self._subject_samples.get(pk):
            template = _template(self._subject_sums[pk])
            self._vectors.add(np.array([pk], dtype=np.int64), template[None, :])

    def remove_samples(self, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples(sample_ids)

    def _remove_samples(self, sample_ids: np.ndarray) -> None:
        present = [int(s) for s in sample_ids if int(s) in self._sample_subject]
        if not present:
            return
        touched: set[int] = set()
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

    def remove_subject(self, pk: int, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples(sample_ids)
            name = self._subject_names.pop(pk, None)
            if name is not None:
                self._subject_pks.pop(name, None)
            self._subject_samples.pop(pk, None)
            self._subject_sums.pop(pk, None)
            if self.scoring == "mean":
                self._vectors.remove(np.array([pk], dtype=np.int64))

    @classmethod
    def from_contents(cls, dim: int, scoring: str, contents: IndexContents) -> FaissSubjectIndex:
        index = cls(dim, scoring)
        subjects = contents.subjects
        index._subject_names = dict(subjects)
        index._subject_pks = {name: pk for pk, name in subjects.items()}
        for pk in subjects:
            index._subject_samples[pk] = set()
        sample_ids, subject_pks, vectors = (
            contents.sample_ids,
            contents.subject_pks,
            contents.vectors,
        )
        if not len(sample_ids):
            return index
        if scoring == "max":
            index._vectors.add(sample_ids, vectors)
            index._sample_subject = dict(
                zip(sample_ids.tolist(), subject_pks.tolist(), strict=True)
            )
            for sample_id, pk in index._sample_subject.items():
                index._subject_samples[pk].add(sample_id)
        else:
            order = np.argsort(subject_pks, kind="stable")
            boundaries = np.flatnonzero(np.diff(subject_pks[order])) + 1
            for group in np.split(order, boundaries):
                pk = int(subject_pks[group[0]])
                index._add_samples(pk, subjects[pk], sample_ids[group], vectors[group])
        return index


class FaissBackend:
    """`faiss://` (the default): exact search in process memory."""

    name = "faiss"

    def __init__(self, search_threads: int = 1) -> None:
        set_search_threads(search_threads)

    def build(
        self,
        dim: int,
        scoring: str,
        contents: IndexContents,
        *,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> FaissSubjectIndex:
        return FaissSubjectIndex.from_contents(dim, scoring, contents)

"""Exact inner-product search with FAISS (`IndexFlatIP` behind an id map)."""

from __future__ import annotations

import faiss
import numpy as np

from service.index.base import VectorIndex, check_vectors


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP thread count (process-wide)."""
    faiss.omp_set_num_threads(threads)


class FlatIPIndex(VectorIndex):
    """Brute-force exact search; ids are the caller's int64 keys (sample or subject keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        # IndexIDMap2 keeps an id -> row map, so that vectors can be reconstructed by id.
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
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
        queries = check_vectors(queries, self.dim)
        if k <= 0 or self._index.ntotal == 0:
            return (
                np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                np.full((len(queries), max(k, 0)), -1, dtype=np.int64),
            )
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def __len__(self) -> int:
        return int(self._index.ntotal)

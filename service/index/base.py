"""The vector index interface: exact or approximate inner-product search over int64 ids.

The index is derived state: the database is the source of truth and an index is rebuilt from
it at start. FAISS is the default implementation (`FlatIPIndex`); a Milvus-backed one can
follow by implementing this class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class VectorIndex(ABC):
    """Inner-product search; vectors are float32 and L2-normalised by the caller (cosine)."""

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add int64 ids [N] with float32 vectors [N, dim]; ids must be new."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores float32 [Q, k] descending, ids int64 [Q, k].

        Missing entries (fewer than k vectors) have id -1.
        """

    @abstractmethod
    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` as float32 [N, dim]."""

    @abstractmethod
    def __len__(self) -> int: ...


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected vectors of shape [N, {dim}], got {list(array.shape)}")
    return array

"""The models the service holds in memory, by `name@version`: bundle, inference session and
calibration set. (The bundles on disk are `models.registry.ModelRegistry`; this is what was
loaded from them.) Galleries are bound to one of these each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import Bundle, load_bundle
from service.core.embedder import Embedder


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    embedder: Embedder
    calibration: np.ndarray  # float32 [M, D], L2-normalised non-mated embeddings

    @property
    def model_id(self) -> str:
        return self.bundle.manifest.model_id

    @property
    def dim(self) -> int:
        return self.bundle.manifest.embedding_dim


class DuplicateModel(ValueError):
    pass


class LoadedModels:
    def __init__(
        self,
        *,
        threads: int = 0,
        batch_size: int = 64,
        batching: bool = False,
        batch_max_size: int = 32,
        batch_max_wait_ms: float = 0.0,
    ) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self.default_model_id: str | None = None
        self._threads = threads
        self._batch_size = batch_size
        self._batching = batching
        self._batch_max_size = batch_max_size
        self._batch_max_wait_ms = batch_max_wait_ms

    def _embedder(self, bundle: Bundle) -> Embedder:
        if not self._batching:
            return Embedder(bundle, threads=self._threads, batch_size=self._batch_size)
        from service.core.batching import BatchingEmbedder

        return BatchingEmbedder(
            bundle,
            threads=self._threads,
            batch_size=self._batch_size,
            max_batch_size=self._batch_max_size,
            max_wait_ms=self._batch_max_wait_ms,
        )

    def load(
        self, path: str | Path, *, default: bool = False, replace: bool = False
    ) -> LoadedModel:
        """Verify and load a bundle (BundleError if invalid; DuplicateModel if already held)."""
        bundle = load_bundle(path)
        with self._lock:
            if bundle.model_id in self._models and not replace:
                raise DuplicateModel(f"model {bundle.model_id} is already registered")
        model = LoadedModel(
            bundle=bundle,
            embedder=self._embedder(bundle),
            calibration=bundle.load_calibration(),
        )
        with self._lock:
            if model.model_id in self._models and not replace:
                _close(model.embedder)
                raise DuplicateModel(f"model {model.model_id} is already registered")
            self._models[model.model_id] = model
            if default or self.default_model_id is None:
                self.default_model_id = model.model_id
        return model

    def get(self, model_id: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(model_id)

    def all(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda model: model.model_id)

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._models

    def close(self) -> None:
        """Stop the models' batching workers (if any)."""
        for model in self.all():
            _close(model.embedder)


def _close(embedder: Embedder) -> None:
    close = getattr(embedder, "close", None)
    if close is not None:
        close()

"""Model bundles registered at run time, loaded again at every start."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ModelStore(ABC):
    @abstractmethod
    def register_model(self, model_id: str, path: str) -> None:
        """Remember a bundle's directory; registering a model id again replaces its path."""

    @abstractmethod
    def registered_models(self) -> dict[str, str]:
        """model id -> bundle directory."""

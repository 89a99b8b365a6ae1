"""The objects one running service holds, created by the app's lifespan."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from service.auth import ensure_admin_key
from service.engine import GalleryEngine
from service.index.flat import set_search_threads
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.store.base import ApiKeyRecord, Store
from service.store.sqlite import SQLiteStore

logger = logging.getLogger("opengallery.service")


@dataclass
class AppState:
    settings: Settings
    store: Store
    models: ModelRegistry
    engine: GalleryEngine
    metrics: Metrics
    generated_admin_key: str | None = None
    indexes_built: bool = False
    key_cache: dict[str, ApiKeyRecord] = field(default_factory=dict)
    key_cache_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ready(self) -> bool:
        return self.indexes_built and self.models.default_model_id is not None

    def close(self) -> None:
        self.store.close()


def open_state(settings: Settings, metrics: Metrics | None = None) -> AppState:
    """Open the store, load the models, make sure an admin key exists, build the indexes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    set_search_threads(settings.search_threads)
    store = SQLiteStore(settings.database_path)
    metrics = metrics or Metrics()
    models = ModelRegistry(
        threads=settings.inference_threads, batch_size=settings.inference_batch_size
    )
    try:
        default = models.load(settings.model, default=True)
        logger.info("model %s loaded from %s", default.model_id, default.bundle.path)
        for model_id, path in store.registered_models().items():
            if model_id in models:
                continue
            try:
                models.load(Path(path))
            except Exception as error:  # a bundle removed from disk must not stop the service
                logger.error(
                    "registered model %s at %s cannot be loaded: %s", model_id, path, error
                )
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        generated = ensure_admin_key(store, admin)
        engine = GalleryEngine(settings, store, models, metrics)
        engine.build_indexes()
    except BaseException:
        store.close()
        raise
    return AppState(
        settings=settings,
        store=store,
        models=models,
        engine=engine,
        metrics=metrics,
        generated_admin_key=generated,
        indexes_built=True,
    )

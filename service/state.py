"""The objects one running service holds, created by the app's lifespan."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from models.registry import ModelRegistry as BundleDirectory
from service.auth import ensure_admin_key
from service.bundles import bundle_directory, keep_default, load_registered
from service.engine import GalleryEngine
from service.index.flat import set_search_threads
from service.metrics import Metrics
from service.migration import MigrationManager
from service.registry import ModelRegistry
from service.settings import Settings
from service.storage import ApiKeyRecord, Store, open_store

logger = logging.getLogger("opengallery.service")


@dataclass
class AppState:
    settings: Settings
    store: Store
    models: ModelRegistry
    engine: GalleryEngine
    metrics: Metrics
    bundles: BundleDirectory
    migrations: MigrationManager
    generated_admin_key: str | None = None
    indexes_built: bool = False
    key_cache: dict[str, ApiKeyRecord] = field(default_factory=dict)
    key_cache_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ready(self) -> bool:
        return self.indexes_built and self.models.default_model_id is not None

    def close(self) -> None:
        self.migrations.close()  # running jobs stop between chunks and resume at next start
        self.models.close()
        self.store.close()


def open_state(settings: Settings, metrics: Metrics | None = None) -> AppState:
    """Open the store, load the models, make sure an admin key exists, build the indexes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    set_search_threads(settings.search_threads)
    store = open_store(settings.effective_database_url)
    metrics = metrics or Metrics()
    models = ModelRegistry(
        threads=settings.inference_threads,
        batch_size=settings.inference_batch_size,
        batching=settings.batching,
        batch_max_size=settings.batch_max_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
    )
    try:
        default = models.load(settings.model, default=True)
        logger.info("model %s loaded from %s", default.model_id, default.bundle.path)
        bundles = bundle_directory(settings)
        keep_default(bundles, default)
        load_registered(models, bundles, store)
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        generated = ensure_admin_key(store, admin)
        engine = GalleryEngine(settings, store, models, metrics)
        engine.build_indexes()
        migrations = MigrationManager(settings, store, models, engine)
        migrations.resume_pending()
    except BaseException:
        models.close()
        store.close()
        raise
    return AppState(
        settings=settings,
        store=store,
        models=models,
        engine=engine,
        metrics=metrics,
        bundles=bundles,
        migrations=migrations,
        generated_admin_key=generated,
        indexes_built=True,
    )

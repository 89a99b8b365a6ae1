"""The objects one running service holds, wired together once at start."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

from models.registry import ModelRegistry as BundleDirectory
from service.core.bundles import bundle_directory, keep_default, load_registered
from service.core.calibration import Calibrator
from service.core.galleries import Galleries
from service.core.ingest import Ingest
from service.core.keys import Authenticator, ensure_admin_key
from service.core.live import LiveGalleries
from service.core.metrics import Metrics
from service.core.migration import MigrationManager
from service.core.models import LoadedModels
from service.core.recognition import Recognition
from service.index import open_index
from service.settings import Settings
from service.storage import Store, open_store

logger = logging.getLogger("opengallery.service")


@dataclass
class ServiceState:
    settings: Settings
    store: Store
    models: LoadedModels
    bundles: BundleDirectory
    live: LiveGalleries
    galleries: Galleries
    recognition: Recognition
    migrations: MigrationManager
    keys: Authenticator
    metrics: Metrics
    generated_admin_key: str | None = None
    indexes_built: bool = False

    @property
    def ready(self) -> bool:
        return self.indexes_built and self.models.default_model_id is not None

    def close(self) -> None:
        self.migrations.close()  # running jobs stop between chunks and resume at next start
        self.live.save_snapshots()
        self.models.close()
        self.store.close()


def release_free_memory() -> None:
    """Hand the heap that building the indexes freed back to the system. glibc keeps freed
    small blocks (the embeddings read from the database, a few KB each) in the process, so a
    server that built a large index would otherwise hold that memory for good."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    libc.malloc_trim(0)


def open_state(settings: Settings, metrics: Metrics | None = None) -> ServiceState:
    """Open the store, load the models, make sure an admin key exists, build the indexes."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = open_index(
        settings.index_url, search_threads=settings.search_threads, data_dir=settings.data_dir
    )
    store = open_store(settings.effective_database_url)
    metrics = metrics or Metrics()
    models = LoadedModels(
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
        live = LiveGalleries(store, models, backend)
        live.load_all()
        release_free_memory()
        metrics.gallery_sizes = live.sizes
        ingest = Ingest(settings)
        calibrator = Calibrator()
        galleries = Galleries(settings, store, models, live, ingest, metrics)
        recognition = Recognition(settings, store, live, ingest, calibrator, metrics)
        migrations = MigrationManager(settings, store, models, live, calibrator)
        migrations.resume_pending()
    except BaseException:
        models.close()
        store.close()
        raise
    return ServiceState(
        settings=settings,
        store=store,
        models=models,
        bundles=bundles,
        live=live,
        galleries=galleries,
        recognition=recognition,
        migrations=migrations,
        keys=Authenticator(store),
        metrics=metrics,
        generated_admin_key=generated,
        indexes_built=True,
    )

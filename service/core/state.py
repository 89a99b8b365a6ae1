"""The objects one running service holds, wired together once at start."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from models.registry import ModelRegistry as BundleDirectory
from service.core.bundles import bundle_directory, keep_default, load_registered
from service.core.calibration_sets import CalibrationSets
from service.core.errors import StartupError
from service.core.galleries import Galleries
from service.core.ingest import Ingest
from service.core.keys import Authenticator, ensure_admin_key
from service.core.live import LiveGalleries
from service.core.memory import release_free_memory
from service.core.metrics import Metrics
from service.core.migration import MigrationManager
from service.core.models import LoadedModels
from service.core.recognition import Recognition
from service.core.replication import ChangeFollower
from service.core.transfer import GalleryTransfer
from service.index import IndexUnavailable, open_index
from service.settings import Settings
from service.storage import Store, StoreOpenError, StoreUnavailable, open_store
from service.storage.factory import sqlite_path
from service.storage.locking import lock_file

logger = logging.getLogger("opengallery.service")

# How long /readyz waits for each dependency: a load balancer's probe gives up after a few
# seconds, and a dependency slower than this is not one to send traffic through.
DEPENDENCY_TIMEOUT_S = 2.0


@dataclass
class ServiceState:
    settings: Settings
    store: Store
    models: LoadedModels
    bundles: BundleDirectory
    live: LiveGalleries
    galleries: Galleries
    recognition: Recognition
    calibration_sets: CalibrationSets
    migrations: MigrationManager
    keys: Authenticator
    metrics: Metrics
    transfer: GalleryTransfer
    generated_admin_key: str | None = None
    indexes_built: bool = False
    follower: ChangeFollower | None = None  # applies what other replicas write

    @property
    def ready(self) -> bool:
        return self.indexes_built and self.models.default_model_id is not None

    def unavailable(self, timeout: float = DEPENDENCY_TIMEOUT_S) -> list[str]:
        """The dependencies that do not answer now: "database", "index" (a vector index
        server; one in this process has nothing to lose). Each is asked anew, so a dependency
        that is back is reported back at once."""
        down = []
        checks = [
            ("database", self.store.ping),
            ("index", getattr(self.live.backend, "ping", None)),
        ]
        for name, ping in checks:
            if ping is None:
                continue
            try:
                ping(timeout)
            except (StoreUnavailable, IndexUnavailable) as error:
                logger.warning("not ready: %s", error)  # names the server, never a password
                down.append(name)
        return down

    def close(self) -> None:
        follower = self.follower
        if follower is not None:
            follower.close()
        self.migrations.close()  # running jobs stop between chunks and resume at next start
        if follower is None:
            self.live.save_snapshots()
        else:
            try:
                follower.catch_up()  # a snapshot must hold what other processes wrote
                self.live.save_snapshots(lambda: follower.cursor >= self.store.last_change())
            except Exception:  # shutting down: a missing snapshot only slows the next start
                logger.exception("index snapshots not saved")
        self.models.close()
        self.keys.close()  # its last_used writes end before the store closes
        self.store.close()
        close_index = getattr(self.live.backend, "close", None)  # a client of an index server
        if close_index is not None:
            close_index()


def check_not_emptied(settings: Settings) -> None:
    """StartupError for a zero-length database file in a data directory used before.

    SQLite opens an empty file as a new database, so a database truncated by accident (or
    replaced by `touch`) would start an empty service without a word while the registered
    models show the directory held data.
    """
    url = settings.effective_database_url
    if not url.lower().startswith("sqlite:") or settings.allow_empty_database:
        return
    path = sqlite_path(url)
    wal = path.with_name(path.name + "-wal")
    empty = path.is_file() and path.stat().st_size == 0
    if not empty or (wal.is_file() and wal.stat().st_size > 0):
        return
    if (settings.data_dir / "models").is_dir():
        raise StartupError(
            f"{path} is empty (0 bytes) but {settings.data_dir} was already used (it holds "
            "models/): restore the database, or start with --allow-empty-database "
            "(OPENGALLERY_ALLOW_EMPTY_DATABASE=true) to begin anew"
        )


def claim_index_slot(data_dir: Path) -> tuple[Path, IO[bytes]]:
    """An index directory of its own for one of several processes serving `data_dir`
    (`serve --workers N`): `<data_dir>/index/worker-<k>` for the first `k` whose
    `<data_dir>/index/slots/<k>.lock` no living process holds, and that lock, which the caller
    keeps open as long as it uses the directory (the kernel releases it if the process dies).
    A restarted worker takes a free slot and finds that slot's snapshots (each is checked
    against the database's version when loaded)."""
    root = data_dir / "index"
    slots = root / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for k in itertools.count():
        held = lock_file(slots / f"{k}.lock", wait=False)
        if held is not None:
            return root / f"worker-{k}", held
    raise AssertionError("unreachable: finitely many slots are held")


def open_state(
    settings: Settings, metrics: Metrics | None = None, *, index_dir: Path | None = None
) -> ServiceState:
    """Open the store, load the models, make sure an admin key exists, build the indexes.
    `index_dir` is where an index kept on disk lives (default `<data_dir>/index`).

    StartupError (one line) when the database cannot be used or the default model's weights
    differ from the registered bundle of the same id.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = open_index(
        settings.index_url,
        search_threads=settings.search_threads,
        index_dir=index_dir or settings.data_dir / "index",
    )
    check_not_emptied(settings)
    try:
        store = open_store(settings.effective_database_url)
    except StoreOpenError as error:  # its message names the file
        raise StartupError(str(error)) from None
    metrics = metrics or Metrics(gallery_labels=settings.metrics_gallery_labels)
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
        # Read before loading: what commits while the galleries load is applied after.
        applied = store.last_change()
        live = LiveGalleries(store, models, backend)
        live.load_all()
        release_free_memory()
        metrics.gallery_sizes = live.sizes
        metrics.storage_full = store.space_exhausted
        ingest = Ingest(settings)
        galleries = Galleries(settings, store, models, live, ingest, metrics)
        recognition = Recognition(settings, store, live, ingest, metrics)
        calibration_sets = CalibrationSets(settings, store, live, ingest)
        migrations = MigrationManager(settings, store, models, live)
        keys = Authenticator(store, cache_seconds=settings.key_cache_seconds)
        follower = ChangeFollower(
            store,
            live,
            keys,
            models,
            after=applied,
            load_models=lambda: load_registered(models, bundle_directory(settings), store),
            retention_s=settings.change_log_retention_hours * 3600,
        )
        follower.catch_up()  # what other replicas wrote while this one loaded
        live.on_miss = follower.reconcile_gallery
        metrics.change_log_behind = follower.behind
        live.on_stale = follower.reconcile_model
        migrations.resume_pending()
        follower.start()
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
        calibration_sets=calibration_sets,
        migrations=migrations,
        keys=keys,
        follower=follower,
        metrics=metrics,
        transfer=GalleryTransfer(store, models, live),
        generated_admin_key=generated,
        indexes_built=True,
    )

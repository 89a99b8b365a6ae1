"""Live galleries: each gallery's in-memory (model, index) pair, and the atomic model swap.

The database is the source of truth; the indexes are derived from it at start and then kept
equal to it: a gallery mutation commits to the store first, then applies the same change to
the index, both under the gallery's mutation lock. A request snapshots `gallery.active` once,
so the model that embedded its probe is the model of the index it searches, even while a
migration swaps them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from models.calibration import min_searches_for_fpir
from service.core.calibration import GalleryCalibration
from service.core.errors import ServiceError, not_found
from service.core.models import LoadedModel, LoadedModels
from service.index import IndexBackend, IndexContents, IndexUnavailable, SubjectSearch
from service.storage import GalleryRecord, Store

logger = logging.getLogger("opengallery.service")


@dataclass(frozen=True)
class ActiveModel:
    """The model a gallery answers with, its index and the calibration kept against that
    index: replaced as one."""

    model: LoadedModel
    index: SubjectSearch
    calibration: GalleryCalibration


def index_writes(index: SubjectSearch) -> AbstractContextManager[None]:
    """Held around a gallery mutation from before its commit to the store until the index has
    it: an index that replicas share (Milvus) is written by one process at a time, in commit
    order; an index in this process needs nothing more than the gallery's lock."""
    writing = getattr(index, "writing", None)
    return writing() if writing is not None else nullcontext()


def index_settled(index: SubjectSearch) -> AbstractContextManager[None]:
    """Held while applying a change another process committed: on an index that replicas
    share, until its committer has written it there (see `index_writes`)."""
    settled = getattr(index, "settled", None)
    return settled() if settled is not None else nullcontext()


# Bound on the changes a gallery remembers having applied itself: past it they are forgotten,
# and the follower applies them again, which is harmless (applying is idempotent).
_LOCAL_LIMIT = 100_000


@dataclass
class LiveGallery:
    record: GalleryRecord  # its settings (fpir, scoring, keep_images) and model
    active: ActiveModel
    lock: threading.Lock = field(default_factory=threading.Lock)  # serialises mutations
    # Changes this process committed and applied itself, until the change log's follower
    # meets them (then it skips them: no second read or calibration update). Held under
    # `lock`; keys such as ("add", sample id).
    local: Counter[tuple] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.record.name

    def note_local(self, *changes: tuple) -> None:
        """The caller holds `lock` and has applied these committed changes itself."""
        if len(self.local) > _LOCAL_LIMIT:
            self.local.clear()
        self.local.update(changes)

    def take_local(self, change: tuple) -> bool:
        """Whether this process applied `change` itself (forgetting it). Caller holds `lock`."""
        count = self.local.get(change, 0)
        if not count:
            return False
        if count == 1:
            del self.local[change]
        else:
            self.local[change] = count - 1
        return True


class LiveGalleries:
    """Owns every gallery's in-memory index; the only place that assigns `active`."""

    def __init__(self, store: Store, models: LoadedModels, backend: IndexBackend) -> None:
        self.store = store
        self.models = models
        self.backend = backend
        coordinate = getattr(backend, "coordinate", None)
        if coordinate is not None:  # an index that every process on this database shares
            coordinate(store.exclusive)
        self._galleries: dict[str, LiveGallery] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.RLock] = {}
        # Called with the name of a gallery the database has and memory has not (created by
        # another replica a moment ago): the change log's follower builds it at once.
        self.on_miss: Callable[[str], None] | None = None
        # Called with the name of a gallery whose model the database changed under a write
        # (a migration run by another replica): the follower switches it at once.
        self.on_stale: Callable[[str], None] | None = None
        # Galleries whose index refused a change the database committed, with how many times
        # it did: the follower builds them again from the database once the index answers.
        self._unindexed: Counter[str] = Counter()

    @contextmanager
    def writing(self, gallery: LiveGallery) -> Iterator[None]:
        """Around a mutation of `gallery`, from before its commit until its index has it
        (`index_writes`). An index that fails after the commit (a Milvus server gone) leaves
        the database ahead of it: the gallery is marked for `unindexed()`."""
        with index_writes(gallery.active.index):
            try:
                yield
            except IndexUnavailable:
                with self._lock:
                    self._unindexed[gallery.name] += 1
                raise

    def unindexed(self) -> dict[str, int]:
        """Galleries whose index missed a committed change: name -> failures so far."""
        with self._lock:
            return dict(self._unindexed)

    def indexed_again(self, name: str, failures: int) -> None:
        """`name` was built again after `failures` failures (a later failure keeps it marked)."""
        with self._lock:
            if self._unindexed.get(name) == failures:
                del self._unindexed[name]

    def refresh(self, name: str) -> None:
        """Catch up with a model switch committed elsewhere (see `on_stale`)."""
        if self.on_stale is not None:
            self.on_stale(name)

    def load_all(self) -> None:
        """Build every gallery's index from the database."""
        for record in self.store.list_galleries():
            model = self.models.get(record.model_id)
            if model is None:
                logger.error(
                    "gallery %r uses model %s, which is not loaded: it is unavailable until "
                    "that bundle is registered",
                    record.name,
                    record.model_id,
                )
                continue
            gallery = LiveGallery(record, self._load_or_build(record, model))
            with self._lock:
                self._galleries[record.name] = gallery
            logger.info(
                "gallery %r: %d subjects, %d samples indexed with %s",
                record.name,
                gallery.active.index.subject_count,
                gallery.active.index.sample_count,
                model.model_id,
            )
        retain = getattr(self.backend, "retain_snapshots", None)
        if retain is not None:  # those of deleted galleries and of models migrated away from
            with self._lock:
                retain({(g.name, g.active.model.model_id) for g in self._galleries.values()})

    def _load_or_build(self, record: GalleryRecord, model: LoadedModel) -> ActiveModel:
        """At start: the backend's snapshot if it was saved at the gallery's current version
        (with the calibration's kept scores, used if saved for the calibration set in effect),
        else a build from the database (then saved, for the next start)."""
        load = getattr(self.backend, "load_snapshot", None)
        if load is not None:
            snapshot = load(record.name, model.model_id, record.version, model.dim, record.scoring)
            if snapshot is not None:
                logger.info(
                    "gallery %r: index snapshot at version %d loaded", record.name, record.version
                )
                calibration = self.build_calibration(
                    record, model, snapshot.index, snapshot.attached
                )
                return ActiveModel(model, snapshot.index, calibration)
        active = self.build_active(record, model)
        save = getattr(self.backend, "save_snapshot", None)
        if save is not None:
            try:
                save(
                    active.index,
                    record.name,
                    model.model_id,
                    record.version,
                    active.calibration.saved(),
                )
            except OSError as error:  # a start without a snapshot is only slower
                logger.warning("gallery %r: index snapshot not saved: %s", record.name, error)
        return active

    def save_snapshots(self, is_current: Callable[[], bool] | None = None) -> None:
        """Save every gallery's index where the backend can (at shutdown): each under its
        gallery's lock, at the version the database has then, which is what it reflects, as
        long as `is_current()` (every change committed by other processes is applied) holds
        once the version is read; otherwise it is not saved (the next start builds it)."""
        save = getattr(self.backend, "save_snapshot", None)
        if save is None:
            return
        with self._lock:
            galleries = list(self._galleries.values())
        for gallery in galleries:
            with gallery.lock:
                try:
                    record = self.store.get_gallery(gallery.name)
                    active = gallery.active
                    if record is None or record.model_id != active.model.model_id:
                        continue
                    if is_current is not None and not is_current():
                        logger.info("gallery %r: not current, no snapshot saved", gallery.name)
                        continue
                    save(
                        active.index,
                        record.name,
                        active.model.model_id,
                        record.version,
                        active.calibration.saved(),
                    )
                except Exception:  # shutting down: a missing snapshot only slows the next start
                    logger.exception("gallery %r: index snapshot not saved", gallery.name)

    def build_active(self, record: GalleryRecord, model: LoadedModel) -> ActiveModel:
        """`record`'s (model, index, calibration) for `model`, from the store: the one full
        calibration search of this pair happens here, never on a request."""
        index = self.build_index(record, model)
        return ActiveModel(model, index, self.build_calibration(record, model, index))

    def build_calibration(
        self,
        record: GalleryRecord,
        model: LoadedModel,
        index: SubjectSearch,
        saved: Mapping[str, np.ndarray] | None = None,
    ) -> GalleryCalibration:
        """The calibration against `index`; `saved` is what the calibration saved with
        `index`'s snapshot, used if it belongs to the calibration set in effect now."""
        probes, source = self.calibration_set(record, model)
        return GalleryCalibration(index, probes, source, warm_fpir=record.fpir, saved=saved)

    def calibration_set(self, record: GalleryRecord, model: LoadedModel) -> tuple[np.ndarray, str]:
        """The gallery's own calibration set embedded by `model` once it is large enough for
        the gallery's FPIR (10 / fpir searches), else the bundle's."""
        own = self.store.load_calibration(record.name, model.model_id)
        if len(own.sample_ids) and len(own.sample_ids) >= min_searches_for_fpir(record.fpir):
            return own.vectors.reshape(-1, model.dim), "gallery"
        return model.calibration, "bundle"

    def build_index(self, record: GalleryRecord, model: LoadedModel) -> SubjectSearch:
        """The index of `record` for `model`, from the embeddings stored for that model. An
        index that replicas share is read from the store and built under its writer's mutex:
        no other process's write reaches it in between."""
        building = getattr(self.backend, "building", None)
        with building(record.name, model.model_id) if building is not None else nullcontext():
            stored = self.store.load_embeddings(record.name, model.model_id)
            if stored.vectors.size and stored.vectors.shape[1] != model.dim:
                raise RuntimeError(
                    f"gallery {record.name!r}: stored embeddings have dimension "
                    f"{stored.vectors.shape[1]}, model {model.model_id} has {model.dim}"
                )
            vectors = stored.vectors.reshape(-1, model.dim).astype(np.float32, copy=False)
            contents = IndexContents(
                stored.sample_ids, stored.subject_pks, vectors, stored.subjects
            )
            return self.backend.build(
                model.dim, record.scoring, contents, gallery=record.name, model_id=model.model_id
            )

    def get(self, name: str) -> LiveGallery:
        with self._lock:
            gallery = self._galleries.get(name)
        if gallery is not None:
            return gallery
        stored = self.store.get_gallery(name) is not None
        if stored and self.on_miss is not None:
            self.on_miss(name)
            with self._lock:
                gallery = self._galleries.get(name)
        if gallery is None:
            if stored:
                raise ServiceError(
                    "model_unavailable", f"gallery {name!r} exists but its model is not loaded"
                )
            raise not_found("gallery", name)
        return gallery

    def find(self, name: str) -> LiveGallery | None:
        with self._lock:
            return self._galleries.get(name)

    def building(self, name: str) -> threading.RLock:
        """Held while gallery `name` is built: the request that created it, the follower that
        read its creation and a request that missed it must not each build an index (on
        Milvus they would drop and make one collection under each other)."""
        with self._lock:
            return self._build_locks.setdefault(name, threading.RLock())

    def add(
        self, record: GalleryRecord, model: LoadedModel, index: SubjectSearch | None = None
    ) -> LiveGallery:
        """A gallery the caller created in the store: empty, or served by `index` (built by
        `build_index` from what the store holds). If the change log's follower has already
        built this same gallery (same creation time), that one is kept."""
        with self.building(record.name):
            held = self.find(record.name)
            if held is not None and held.record.created == record.created:
                return held
            if index is None:
                # From the store, not empty: on an index replicas share, another replica may
                # have enrolled into the gallery already.
                index = self.build_index(record, model)
            gallery = LiveGallery(
                record, ActiveModel(model, index, self.build_calibration(record, model, index))
            )
            with self._lock:
                self._galleries[record.name] = gallery
            return gallery

    def add_from_store(self, record: GalleryRecord, model: LoadedModel) -> LiveGallery:
        """A gallery the store holds (imported, or created by another replica), built from
        what it holds, once."""
        with self.building(record.name):
            held = self.find(record.name)
            if held is not None and held.record.created == record.created:
                return held
            return self.add(record, model, self.build_index(record, model))

    def remove(self, name: str, gallery: LiveGallery | None = None) -> None:
        """Forget gallery `name` (only if it is still `gallery`, when given)."""
        with self._lock:
            if gallery is None or self._galleries.get(name) is gallery:
                self._galleries.pop(name, None)

    def swap(self, gallery: LiveGallery, record: GalleryRecord, active: ActiveModel) -> None:
        """Point `gallery` at another (model, index) pair: one reference assignment, so a
        request sees the old pair or the new one, never a mix. The caller holds its lock and
        has committed the switch to the store (`record` is the committed state)."""
        gallery.record = dataclasses.replace(record, model_id=active.model.model_id)
        gallery.active = active

    def sizes(self) -> dict[str, tuple[int, int]]:
        """(subjects, samples) per gallery, as indexed."""
        with self._lock:
            galleries = list(self._galleries.values())
        return {
            gallery.name: (gallery.active.index.subject_count, gallery.active.index.sample_count)
            for gallery in galleries
        }

"""Replicas: every `opengallery serve` process follows the database's change log.

Any number of processes may serve one database (replicas on PostgreSQL; `--workers` on one
machine with SQLite). Each keeps its own in-memory state (indexes, calibrations, loaded models,
cached keys) equal to the database by following the change log
(service/storage/protocols/changes.py): a write made by any process appends its change in its
own transaction, and each process's `ChangeFollower` applies the changes it has not applied
yet, in log order, from one background thread.

- Waking up: on PostgreSQL a notification sent at commit (LISTEN), with a timeout after which
  the log is read anyway; on SQLite a poll of the log's last seq (one indexed read).
- Applying: a change names what changed; the follower reads the data as the database holds it
  now and applies it under the gallery's mutation lock, so applying a change twice, or a change
  that a later one undid, leaves memory equal to the database. A change this process applied
  itself (`LiveGallery.note_local`) is skipped without reading anything.
- Catch-up: a process remembers the last seq it applied. At start it reads the log's last seq
  *before* loading the galleries, then applies every change after it: whatever committed while
  it loaded is applied (again, harmlessly). A lost connection resumes from the same seq.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from service.core.keys import Authenticator
from service.core.live import LiveGalleries, LiveGallery, index_settled
from service.core.models import LoadedModel, LoadedModels
from service.index import IndexUnavailable
from service.storage import ChangeRecord, Store, StoreUnavailable
from service.storage.protocols.changes import (
    CALIBRATION_CHANGED,
    GALLERY_CREATED,
    GALLERY_DELETED,
    KEY_REVOKED,
    MODEL_REGISTERED,
    MODEL_SWITCHED,
    SAMPLES_ADDED,
    SAMPLES_REMOVED,
    SUBJECT_DELETED,
    SUBJECT_PUT,
)

logger = logging.getLogger("opengallery.service")

WAIT_S = 0.5  # longest wait for a wake-up before reading the log anyway (and checking stop)
PRUNE_EVERY_S = 600.0  # how often a follower deletes changes older than the retention
MODEL_RELOAD_S = 2.0  # least time between two looks for bundles registered elsewhere
RETRY_S = 1.0  # after the database was unreachable
REINDEX_S = 2.0  # least time between two tries to build again a gallery its index fell behind
BATCH = 1000  # changes read at a time


def merged(changes: list[ChangeRecord]) -> list[ChangeRecord]:
    """`changes` with each run of consecutive sample additions to one gallery made one (one
    read and one index update for a burst of enrolments); it carries the run's last seq."""
    out: list[ChangeRecord] = []
    for change in changes:
        last = out[-1] if out else None
        if (
            last is not None
            and change.kind == SAMPLES_ADDED
            and last.kind == SAMPLES_ADDED
            and last.gallery == change.gallery
        ):
            out[-1] = dataclasses.replace(change, sample_ids=last.sample_ids + change.sample_ids)
        else:
            out.append(change)
    return out


class ChangeFollower:
    """Applies the change log to one process's live state, from one background thread."""

    def __init__(
        self,
        store: Store,
        live: LiveGalleries,
        keys: Authenticator,
        models: LoadedModels,
        *,
        after: int,
        load_models: Callable[[], None] | None = None,
        wait_s: float = WAIT_S,
        retention_s: float | None = None,
    ) -> None:
        """`after`: the last seq this process's state already reflects (read before loading)."""
        self.store = store
        self.live = live
        self.keys = keys
        self.models = models
        self.load_models = load_models
        self.wait_s = wait_s
        self.retention_s = retention_s  # None: never prune
        self._pruned_at = time.monotonic()
        self._models_loaded_at = -MODEL_RELOAD_S
        self._reindexed_at = -REINDEX_S
        self._cursor = after
        self._lock = threading.Lock()  # one catch-up at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cursor(self) -> int:
        """The seq of the last change applied."""
        return self._cursor

    def behind(self) -> int | None:
        """How far the database's change log is ahead of what this process applied, in
        sequence numbers (an upper bound on the changes: seqs may skip numbers); None when
        the database does not answer."""
        try:
            return max(self.store.last_change() - self._cursor, 0)
        except StoreUnavailable:
            return None

    # -- running --
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="change-follower", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                if self.store.wait_for_changes(self._cursor, self.wait_s):
                    self.catch_up()
                self._prune()
                self._reindex()
                if failing:
                    logger.info("change log: following again from seq %d", self._cursor)
                    failing = False
            except StoreUnavailable as error:
                if not failing:
                    logger.warning("change log: cannot read it (%s); retrying", error)
                    failing = True
                self._stop.wait(RETRY_S)
            except Exception:  # a bug must not stop replication for good
                logger.exception("change log: following failed at seq %d", self._cursor)
                self._stop.wait(RETRY_S)

    def catch_up(self) -> int:
        """Apply every change after the cursor; how many were applied. StoreUnavailable
        leaves the cursor at the last change applied (the next call resumes there)."""
        applied = 0
        with self._lock:
            while True:
                changes = self.store.changes_after(self._cursor, BATCH)
                if not changes:
                    break
                if changes[0].seq != self._cursor + 1:
                    # Changes after the cursor may have been pruned: reload instead.
                    newest = self.store.last_change()
                    self.resync()
                    self._cursor = newest
                    continue
                for change in merged(changes):
                    self.apply(change)
                    self._cursor = change.seq
                applied += len(changes)
        return applied

    def _prune(self) -> None:
        if self.retention_s is None or time.monotonic() - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = time.monotonic()
        deleted = self.store.prune_changes(self.retention_s)
        if deleted:
            logger.info("change log: %d changes older than the retention deleted", deleted)

    def _reindex(self) -> None:
        if not self.live.unindexed() or time.monotonic() - self._reindexed_at < REINDEX_S:
            return
        self._reindexed_at = time.monotonic()
        self.reindex()

    def reindex(self) -> None:
        """Build again from the database each gallery whose index refused a committed change
        (`LiveGalleries.writing`): a shared index (Milvus) gets the rows it missed, this
        process's memory the change. One the index still refuses stays marked for the next
        round."""
        for name, failures in sorted(self.live.unindexed().items()):
            try:
                self.rebuild(name)
            except IndexUnavailable as error:
                logger.info("gallery %r: its index is still behind the database (%s)", name, error)
                continue
            self.live.indexed_again(name, failures)
            logger.info("gallery %r: built again from the database after an index failure", name)

    def resync(self) -> None:
        """Reload every gallery from the database and forget every cached key: what this
        process needs of the change log may be gone (pruned)."""
        logger.warning(
            "change log: changes after seq %d may have been pruned; reloading from the database",
            self._cursor,
        )
        if self.load_models is not None:
            self.load_models()
        names = {record.name for record in self.store.list_galleries()} | set(self.live.sizes())
        for name in sorted(names):
            self.rebuild(name)
        self.keys.forget_all()

    # -- applying --
    def apply(self, change: ChangeRecord) -> None:
        kind, name = change.kind, change.gallery
        if kind == KEY_REVOKED and change.key_id is not None:
            self.keys.forget(change.key_id)
            return
        if kind == MODEL_REGISTERED and change.model_id is not None:
            self._model(change.model_id)
            return
        if name is None:
            return  # key_created: nothing cached (unknown keys are looked up)
        try:
            if kind in (GALLERY_CREATED, GALLERY_DELETED):
                self.reconcile_gallery(name)
            elif kind == MODEL_SWITCHED:
                self.reconcile_model(name)
            else:
                gallery = self.live.find(name)
                if gallery is not None:
                    with gallery.lock, index_settled(gallery.active.index):
                        self._apply_to(gallery, change)
        except StoreUnavailable:
            raise
        except Exception:
            logger.exception(
                "change %d (%s) on gallery %r: rebuilding the gallery from the database",
                change.seq,
                kind,
                name,
            )
            self.rebuild(name)

    def _apply_to(self, gallery: LiveGallery, change: ChangeRecord) -> None:
        """The caller holds the gallery's lock."""
        kind, name, active = change.kind, gallery.name, gallery.active
        if kind == SAMPLES_ADDED:
            ids = [i for i in change.sample_ids if not gallery.take_local(("add", i))]
            if not ids:
                return
            loaded = self.store.load_sample_embeddings(name, active.model.model_id, ids)
            if not loaded.sample_ids.size:
                return  # deleted since, or embedded by another model (a switch follows)
            names = [loaded.subjects[int(pk)] for pk in loaded.subject_pks]
            vectors = loaded.vectors.reshape(-1, active.model.dim).astype(np.float32, copy=False)
            active.index.add_many(loaded.subject_pks, names, loaded.sample_ids, vectors)
            active.calibration.samples_added_many(names, vectors)
        elif kind == SAMPLES_REMOVED:
            ids = [i for i in change.sample_ids if not gallery.take_local(("remove", i))]
            if ids and change.subject_id is not None:
                active.index.remove_samples(np.array(ids, dtype=np.int64))
                active.calibration.samples_removed(change.subject_id)
        elif kind == SUBJECT_PUT and change.subject_pk is not None:
            if gallery.take_local(("put", change.subject_pk)) or change.subject_id is None:
                return
            record = self.store.get_subject(name, change.subject_id)
            if record is not None and record.pk == change.subject_pk:
                active.index.set_subject(record.pk, record.subject_id)
        elif kind == SUBJECT_DELETED and change.subject_pk is not None:
            if gallery.take_local(("delete", change.subject_pk)) or change.subject_id is None:
                return
            ids = np.array(change.sample_ids, dtype=np.int64)
            now = self.store.get_subject(name, change.subject_id)
            if now is not None and now.pk == change.subject_pk:
                active.index.remove_samples(ids)  # the key was reused by a newer subject
            else:
                active.index.remove_subject(change.subject_pk, ids)
            active.calibration.subject_removed(change.subject_id)
        elif kind == CALIBRATION_CHANGED:
            if gallery.take_local(("calibration",)):
                return
            probes, source = self.live.calibration_set(gallery.record, active.model)
            active.calibration.replace_probes(probes, source)

    def reconcile_gallery(self, name: str) -> None:
        """Make gallery `name` in memory what the database holds: gone, or built from it
        (a gallery of the same name created anew is told apart by its creation time)."""
        with self.live.building(name):
            record = self.store.get_gallery(name)
            held = self.live.find(name)
            if record is None:
                if held is not None:
                    with held.lock:
                        self.live.remove(name, held)
                return
            if held is not None and held.record.created == record.created:
                return
            model = self._model(record.model_id)
            if model is None:
                logger.error(
                    "gallery %r uses model %s, which is not loaded here: it is unavailable on "
                    "this replica until that bundle is registered",
                    name,
                    record.model_id,
                )
                if held is not None:
                    self.live.remove(name, held)
                return
            self.live.add_from_store(record, model)

    def reconcile_model(self, name: str) -> None:
        """Serve gallery `name` with the model the database names (after a migration that
        another process ran): the new (model, index, calibration) replaces the old at once."""
        held = self.live.find(name)
        record = self.store.get_gallery(name)
        if held is None or record is None or held.record.created != record.created:
            self.reconcile_gallery(name)
            return
        if held.active.model.model_id == record.model_id:
            return
        model = self._model(record.model_id)
        if model is None:
            logger.error("gallery %r moved to model %s, not loaded here", name, record.model_id)
            return
        with held.lock:
            record = self.store.get_gallery(name)
            if record is None or held.active.model.model_id == record.model_id:
                return
            self.live.swap(held, record, self.live.build_active(record, model))
            logger.info("gallery %r now answers with %s (switched elsewhere)", name, model.model_id)

    def rebuild(self, name: str) -> None:
        """Build gallery `name` again from the database (after a change failed to apply)."""
        held = self.live.find(name)
        record = self.store.get_gallery(name)
        if held is None or record is None or held.record.created != record.created:
            self.reconcile_gallery(name)
            return
        model = self._model(record.model_id)
        if model is None:
            return
        with held.lock:
            self.live.swap(held, record, self.live.build_active(record, model))

    def _model(self, model_id: str) -> LoadedModel | None:
        model = self.models.get(model_id)
        if model is None and self.load_models is not None:
            # Registered by another process since this one started. At most every few seconds:
            # requests for a gallery whose bundle is missing here must not reload all of them.
            now = time.monotonic()
            if now - self._models_loaded_at >= MODEL_RELOAD_S:
                self._models_loaded_at = now
                self.load_models()
                model = self.models.get(model_id)
        return model

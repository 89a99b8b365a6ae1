"""Gallery migrations: re-embed a gallery's kept images with another model, then switch.

A migration is a persisted job (table `jobs`) run by a background thread:

1. Shadow embeddings: every sample (and every probe of the gallery's own calibration set)
   without an embedding by the target model is re-embedded from its kept image, in chunks,
   each chunk committed to the store (`embeddings` rows keyed by (sample, model), so the
   shadow rows never touch the live index). Identify keeps using
   the gallery's current (model, index) pair meanwhile.
2. The switch, under the gallery's mutation lock (enrolments and deletions wait; identify does
   not): embed the delta (samples enrolled since step 1 scanned past them), build the shadow
   index from the store, then ONE transaction points the gallery at the target model and
   drops the old embeddings; then the in-memory (model, index) pair is replaced by one
   reference assignment, and only then is the job marked succeeded. A request snapshots that
   pair once, so each answer's `model` is the model that embedded both its probe and the
   index it searched.

Enrolments during a migration are never lost: those committed before the switch are picked up
by the delta; one that embedded its images with the old model but reaches the commit after the
switch is embedded again with the new model (Galleries.enrol).

Failure: any error marks the job failed with its reason; the gallery stays on its old model
(the switch transaction is all or nothing). Restart: a job left `running` (the process died or
stopped) is resumed at start; shadow embeddings already committed are kept, so it continues
where it stopped (`attempts` counts the runs).

Replicas: a job runs on exactly one process, the holder of its lease in the database (taken
with the job, renewed every third of `job_lease_seconds` by a watcher thread). The watcher also
claims running jobs whose lease expired (their process died) and resumes them. The switch
commits only while this process holds the lease, so a process that lost it (paused past its
lease) cannot switch a second time; enrolments made on other replicas between the delta and
the switch make the switch refuse, and the delta is embedded again. The other replicas switch
when the switch's change reaches them through the change log (core/replication.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid

from models.calibration import min_searches_for_fpir
from service.core.calibration import UnsupportedFPIR, check_fpir_supported
from service.core.errors import ServiceError, not_found
from service.core.images import ImageRejected, decode_image
from service.core.live import LiveGalleries, LiveGallery
from service.core.models import LoadedModel, LoadedModels
from service.settings import Settings
from service.storage import JobRecord, LeaseNotHeld, NotFoundError, Store, StoreConflict

logger = logging.getLogger("opengallery.service")

MIGRATE = "migrate"
SWITCH_ATTEMPTS = 5  # delta + switch, when other replicas keep enrolling in between


class JobStopped(Exception):
    """The service is shutting down: the job stays `running` and resumes at the next start."""


class LeaseLost(JobStopped):
    """Another process holds the job's lease now (this one was paused past it): it runs the
    job; this one stops without recording anything."""


class MigrationManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        models: LoadedModels,
        live: LiveGalleries,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.live = live
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lost: set[str] = set()  # jobs whose lease another process took
        self._lock = threading.Lock()
        # Who holds a lease: unique per process, readable in the database by an operator.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._watcher: threading.Thread | None = None

    # -- API --
    def start(self, gallery: str, model_id: str) -> JobRecord:
        """Validate and start a migration of `gallery` to `model_id` (ServiceError otherwise)."""
        live = self.live.get(gallery)
        target = self.models.get(model_id)
        if target is None:
            known = ", ".join(model.model_id for model in self.models.all())
            raise ServiceError(
                "unknown_model", f"model {model_id!r} is not registered (registered: {known})"
            )
        source = live.active.model
        if source.model_id == target.model_id:
            raise ServiceError(
                "already_on_model", f"gallery {gallery!r} already uses {target.model_id}"
            )
        calibration_total, calibration_without_image = self.store.count_calibration_samples(gallery)
        # The gallery's own set, re-embedded, answers after the switch if it is large enough.
        own = calibration_total >= min_searches_for_fpir(live.record.fpir)
        try:
            check_fpir_supported(
                live.record.fpir,
                calibration_total if own else len(target.calibration),
                "the gallery's calibration set" if own else f"the calibration set of {model_id}",
            )
        except UnsupportedFPIR as error:
            raise ServiceError(
                "target_unsupported_fpir",
                f"gallery {gallery!r} answers at fpir {live.record.fpir} by default, which "
                f"{target.model_id} cannot calibrate: {error.message}",
            ) from None
        total, without_image = self.store.count_samples_without_image(gallery)
        if without_image:
            why = (
                "the gallery does not keep enrolled images"
                if not live.record.keep_images
                else "they were enrolled as embeddings"
            )
            raise ServiceError(
                "cannot_migrate",
                f"gallery {gallery!r} cannot migrate to {target.model_id}: {without_image} of "
                f"its {total} samples have no stored image to re-embed ({why}); re-enrol "
                "them from images or create a new gallery on the new model",
            )
        if calibration_without_image:
            raise ServiceError(
                "cannot_migrate",
                f"gallery {gallery!r} cannot migrate to {target.model_id}: "
                f"{calibration_without_image} of the {calibration_total} probes of its "
                "calibration set have no stored image to re-embed (uploaded as embeddings, or "
                "the gallery does not keep images); upload them again as images, or delete "
                f"the set (DELETE /v1/galleries/{gallery}/calibration)",
            )
        job_id = uuid.uuid4().hex
        try:
            job = self.store.create_job(
                job_id,
                MIGRATE,
                gallery,
                source.model_id,
                model_id,
                owner=self.owner,
                lease_seconds=self.settings.job_lease_seconds,
            )
        except StoreConflict as error:
            raise ServiceError("migration_running", str(error)) from None
        # Shadow rows left by an earlier failed job of the same target are recomputed: a fresh
        # job trusts nothing it did not write itself.
        self.store.drop_embeddings(gallery, target.model_id)
        self._launch(job.job_id)
        logger.info(
            "job %s: migrating gallery %r %s -> %s", job_id, gallery, source.model_id, model_id
        )
        return job

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise not_found("job", job_id)
        return job

    def resume_pending(self) -> list[str]:
        """Resume every job left `running` whose lease is free or expired (its process
        stopped or died); then keep watching for such jobs and renewing this process's leases."""
        resumed = self._adopt()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="job-leases", daemon=True)
            self._watcher.start()
        return resumed

    def _adopt(self) -> list[str]:
        resumed = []
        for job in self.store.list_jobs(status="running"):
            with self._lock:
                if job.job_id in self._threads:
                    continue
            if not self._claim(job.job_id):
                continue  # another replica runs it
            self.store.update_job(job.job_id, attempt=True)
            logger.warning(
                "job %s: resuming the migration of gallery %r to %s (left running)",
                job.job_id,
                job.gallery,
                job.target_model,
            )
            self._launch(job.job_id)
            resumed.append(job.job_id)
        return resumed

    def _claim(self, job_id: str) -> bool:
        """Take the job's lease: free, expired, or held by a process of this machine that is
        gone (killed: its lease would otherwise hold it back until it expires)."""
        lease = self.settings.job_lease_seconds
        if self.store.claim_job(job_id, self.owner, lease):
            return True
        holder = self.store.lease_holder(job_id)
        if holder is None or not _dead_here(holder):
            return False
        self.store.release_job(job_id, holder)
        return self.store.claim_job(job_id, self.owner, lease)

    def _watch(self) -> None:
        """Renew the leases of the jobs this process runs; adopt jobs whose lease expired."""
        period = self.settings.job_lease_seconds / 3
        while not self._stop.wait(period):
            try:
                with self._lock:
                    running = list(self._threads)
                for job_id in running:
                    lease = self.settings.job_lease_seconds
                    if not self.store.claim_job(job_id, self.owner, lease):
                        with self._lock:
                            self._lost.add(job_id)
                self._adopt()
            except Exception as error:  # the database away for a while: try again
                logger.warning("job leases: %s", error)

    def close(self, timeout: float = 30.0) -> None:
        """Stop between chunks; running jobs stay `running` and resume at the next start (or
        on another replica: their leases are given up)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the job --
    def _launch(self, job_id: str) -> None:
        thread = threading.Thread(
            target=self._run, args=(job_id,), name=f"migration-{job_id[:8]}", daemon=True
        )
        with self._lock:
            self._threads[job_id] = thread
        thread.start()

    def _run(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None:
            return
        try:
            self._migrate(job)
        except LeaseLost:
            logger.warning("job %s: another process runs it now; stopped here", job_id)
        except JobStopped:
            logger.info("job %s: stopped by shutdown; it resumes at the next start", job_id)
        except Exception as error:
            reason = _reason(error)
            logger.error(
                "job %s failed; gallery %r stays on %s: %s",
                job_id,
                job.gallery,
                job.source_model,
                reason,
            )
            try:
                self.store.update_job(job_id, status="failed", error=reason)
            except Exception:  # the store is closing: the job resumes at the next start
                logger.exception("job %s: could not record the failure", job_id)
        finally:
            try:
                self.store.release_job(job_id, self.owner)
            except Exception:  # the store is closing: the lease expires by itself
                logger.debug("job %s: lease not released", job_id)
            # Last: close() joins the threads listed here, and must not close the store
            # while this one still uses it.
            with self._lock:
                self._threads.pop(job_id, None)
                self._lost.discard(job_id)

    def _migrate(self, job: JobRecord) -> None:
        target = self.models.get(job.target_model)
        if target is None:
            raise RuntimeError(f"model {job.target_model} is not loaded")
        try:
            live = self.live.get(job.gallery)
        except ServiceError as error:
            raise RuntimeError(error.message) from None
        if live.active.model.model_id == job.target_model:
            # The switch committed, then the process died before recording the job's end.
            total = self._sample_count(job.gallery)
            self.store.update_job(job.job_id, status="succeeded", done=total, total=total)
            return
        if live.active.model.model_id != job.source_model:
            raise RuntimeError(
                f"gallery {job.gallery!r} is on {live.active.model.model_id}, "
                f"not {job.source_model}"
            )
        total = self._sample_count(job.gallery)
        done = total - self.store.count_samples_missing_embedding(job.gallery, target.model_id)
        self.store.update_job(job.job_id, done=done, total=total)
        # 1. Shadow embeddings, chunk by chunk, without blocking the gallery.
        after_id = 0
        while True:
            self._check_running(job)
            embedded, after_id = self._embed_chunk(job, target, after_id)
            if not embedded:
                break
            done += embedded
            total = max(total, done)
            self.store.update_job(job.job_id, done=done, total=total)
            if self.settings.migration_pause_ms > 0:
                self._stop.wait(self.settings.migration_pause_ms / 1000.0)
        after_id = 0
        while True:  # the gallery's own calibration set, likewise (not counted in progress)
            self._check_running(job)
            embedded, after_id = self._embed_chunk(job, target, after_id, calibration=True)
            if not embedded:
                break
        # 2. The delta and the switch, with this process's gallery mutations held off (other
        # replicas' enrolments in between make the switch refuse: the delta is taken again).
        for attempt in range(SWITCH_ATTEMPTS):
            self._check_running(job)
            with live.lock:
                after_id = 0
                while True:
                    embedded, after_id = self._embed_chunk(job, target, after_id)
                    if not embedded:
                        break
                    done += embedded
                after_id = 0
                while True:
                    embedded, after_id = self._embed_chunk(job, target, after_id, calibration=True)
                    if not embedded:
                        break
                try:
                    self._switch(job, live, target)
                    break
                except LeaseNotHeld:
                    raise LeaseLost from None
                except StoreConflict:
                    if attempt == SWITCH_ATTEMPTS - 1:
                        raise
        # Recorded only once the new model answers: a client that sees "succeeded" gets
        # answers from it. (A crash just before this is settled at the next start, above.)
        total = max(total, done)
        self.store.update_job(job.job_id, status="succeeded", done=total, total=total)

    def _embed_chunk(
        self, job: JobRecord, target: LoadedModel, after_id: int, *, calibration: bool = False
    ) -> tuple[int, int]:
        """Embed the next chunk of samples (or calibration probes) lacking a target embedding:
        (count, last id)."""
        missing, put, what = (
            (
                self.store.calibration_images_missing_embedding,
                self.store.put_calibration_embeddings,
                "calibration probe",
            )
            if calibration
            else (self.store.images_missing_embedding, self.store.put_embeddings, "sample")
        )
        chunk = missing(job.gallery, target.model_id, after_id, self.settings.migration_chunk_size)
        if not chunk:
            return 0, after_id
        images = []
        for item in chunk:
            if item.image is None:
                raise RuntimeError(
                    f"{what} {item.sample_id} has no stored image to re-embed (uploaded as an "
                    "embedding during the migration)"
                )
            try:
                images.append(
                    decode_image(
                        item.image,
                        max_bytes=self.settings.max_image_bytes,
                        max_pixels=self.settings.max_image_pixels,
                    )
                )
            except ImageRejected as error:
                raise RuntimeError(f"{what} {item.sample_id}: {error}") from None
        vectors = target.embedder.embed_images(images)
        put(target.model_id, [item.sample_id for item in chunk], vectors)
        return len(chunk), chunk[-1].sample_id

    def _check_running(self, job: JobRecord) -> None:
        """JobStopped at shutdown; LeaseLost once another process took the job."""
        if self._stop.is_set():
            raise JobStopped
        with self._lock:
            if job.job_id in self._lost:
                raise LeaseLost

    def _sample_count(self, gallery: str) -> int:
        record = self.store.get_gallery(gallery)
        if record is None:
            raise NotFoundError("gallery", gallery)
        return record.sample_count

    def _switch(self, job: JobRecord, live: LiveGallery, target: LoadedModel) -> None:
        """Caller holds live.lock. The store switches in one transaction, then memory."""
        if self.live.find(job.gallery) is not live:  # deleted (perhaps re-created) meanwhile
            raise RuntimeError(f"gallery {job.gallery!r} was deleted during the migration")
        record = self.store.get_gallery(job.gallery)
        if record is None:  # impossible while we hold its lock
            raise NotFoundError("gallery", job.gallery)
        # The new index and its calibration (searched once, with the gallery's default FPIR's
        # threshold) before the pair serves: no request pays for them.
        active = self.live.build_active(record, target)
        version = self.store.switch_gallery_model(
            job.gallery, job.source_model, target.model_id, None, lease=(job.job_id, self.owner)
        )
        # Committed: from here on nothing may fail before memory follows the store.
        self.live.swap(live, dataclasses.replace(record, version=version), active)
        logger.info(
            "job %s: gallery %r now answers with %s (%d samples)",
            job.job_id,
            job.gallery,
            target.model_id,
            active.index.sample_count,
        )


def _dead_here(owner: str) -> bool:
    """Whether lease `owner` (host:pid:nonce) names a process of this host that has exited."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _reason(error: Exception) -> str:
    if isinstance(error, ServiceError):
        return error.message
    text = str(error) or type(error).__name__
    if isinstance(error, RuntimeError | StoreConflict):
        return text
    return f"{type(error).__name__}: {text}"

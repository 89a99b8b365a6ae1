"""The blocking client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import httpx

from opengallery.client import _base as calls
from opengallery.client._base import BulkItem, Call, ClientBase, Embedding, ImageInput
from opengallery.client.types import (
    BulkEnrolment,
    Calibration,
    CalibrationSample,
    CalibrationSamplePage,
    CalibrationUpload,
    CreatedKey,
    Enrolment,
    Gallery,
    Health,
    Identification,
    Job,
    KeyInfo,
    ModelInfo,
    Readiness,
    Subject,
    SubjectPage,
    Verification,
)

T = TypeVar("T")


class Client(ClientBase):
    """A blocking client of an opengallery service; safe to share between threads.

    `url` is the service's base URL, `api_key` goes in every request's `X-API-Key` header.
    `timeout` is seconds per request (or an `httpx.Timeout`). A request that is safe to send
    again is retried up to `retries` times on 429/502/503/504 and on connection errors,
    waiting `backoff`, 2*`backoff`, 4*`backoff`... seconds (or what the server's
    Retry-After asks), never more than `max_backoff` at a time. Every failure is an
    `OpenGalleryError`. `limits` and `transport` go to httpx.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        limits: httpx.Limits | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        options: dict[str, Any] = {"transport": transport}
        if limits is not None:
            options["limits"] = limits
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, **options
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as error:
                delay = self._retry_after_error(call, attempt, error)
                if delay is None:
                    raise calls.error_from_transport(call, self.url, error) from None
            else:
                delay = self._retry_after_response(call, attempt, response)
                if delay is None:
                    return calls.read_answer(call, response)
            time.sleep(delay)
            attempt += 1

    # -- galleries --
    def create_gallery(
        self,
        name: str,
        fpir: float | None = None,
        model: str | None = None,
        scoring: str | None = None,
        keep_images: bool | None = None,
    ) -> Gallery:
        """Create a gallery (admin). Unset options take the service's defaults."""
        return self._send(calls.create_gallery(name, fpir, model, scoring, keep_images))

    def get_gallery(self, gallery: str) -> Gallery:
        return self._send(calls.get_gallery(gallery))

    def list_galleries(self) -> list[Gallery]:
        return self._send(calls.list_galleries())

    def delete_gallery(self, gallery: str) -> None:
        """Delete a gallery and everything in it (admin)."""
        self._send(calls.delete_gallery(gallery))

    # -- subjects --
    def put_subject(
        self, gallery: str, subject_id: str, metadata: Mapping[str, Any] | None = None
    ) -> Subject:
        """Create a subject (`.new` is True) or replace its metadata (None keeps it)."""
        return self._send(calls.put_subject(gallery, subject_id, metadata))

    def get_subject(self, gallery: str, subject_id: str) -> Subject:
        """The subject with its samples (`.samples`)."""
        return self._send(calls.get_subject(gallery, subject_id))

    def list_subjects(
        self, gallery: str, limit: int | None = None, cursor: str | None = None
    ) -> SubjectPage:
        """One page of subjects ordered by id; pass `page.next_cursor` for the next."""
        return self._send(calls.list_subjects(gallery, limit, cursor))

    def iter_subjects(self, gallery: str, page_size: int = 100) -> Iterator[Subject]:
        """Every subject of the gallery, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list_subjects(gallery, limit=page_size, cursor=cursor)
            yield from page.subjects
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delete_subject(self, gallery: str, subject_id: str) -> None:
        self._send(calls.delete_subject(gallery, subject_id))

    # -- samples --
    def enroll(
        self,
        gallery: str,
        subject_id: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
    ) -> Enrolment:
        """Enrol images (paths, bytes or binary files) or embeddings of the gallery's model.

        Each sample is enrolled or rejected with a reason (`Enrolment.rejected`). When every
        sample is rejected the service answers 422 (413 when all were too large): an
        OpenGalleryError whose `details["samples"]` lists the outcomes. Content already
        enrolled for the subject is answered with the existing sample (`duplicate`).
        """
        return self._send(calls.enroll(gallery, subject_id, images, embeddings))

    def enroll_many(
        self, gallery: str, items: Sequence[BulkItem], *, create_subjects: bool = False
    ) -> BulkEnrolment:
        """Bulk enrolment: samples of many subjects in one request and one transaction.

        Each item (`BulkItem(subject_id, image=... | embedding=...)`) gets an outcome in
        order; unknown subjects are `subject_not_found` unless `create_subjects`. When every
        item is rejected the service answers 422: an OpenGalleryError whose
        `details["samples"]` lists the outcomes. The service takes at most 5000 items per
        request by default (more is a 413).
        """
        return self._send(calls.enroll_many(gallery, items, create_subjects))

    def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> None:
        self._send(calls.delete_sample(gallery, subject_id, sample_id))

    # -- the gallery's own calibration set --
    def add_calibration_samples(
        self,
        gallery: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
    ) -> CalibrationUpload:
        """Add non-mated probes (people NOT enrolled, from the deployment) to the gallery's
        own calibration set (admin). Each is accepted or rejected with a reason; content
        already in the set is not added twice. The set replaces the bundle's once it holds
        `calibration.needed` probes. All rejected: an OpenGalleryError (422)."""
        return self._send(calls.add_calibration_samples(gallery, images, embeddings))

    def list_calibration_samples(
        self, gallery: str, limit: int | None = None, cursor: str | None = None
    ) -> CalibrationSamplePage:
        """One page of the probes of the gallery's own set, by id (admin)."""
        return self._send(calls.list_calibration_samples(gallery, limit, cursor))

    def iter_calibration_samples(
        self, gallery: str, page_size: int = 100
    ) -> Iterator[CalibrationSample]:
        """Every probe of the gallery's own set, fetched a page at a time (admin)."""
        cursor: str | None = None
        while True:
            page = self.list_calibration_samples(gallery, limit=page_size, cursor=cursor)
            yield from page.samples
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_calibration(self, gallery: str, scores: bool = False) -> Calibration:
        """The calibration the gallery answers with: source, size, thresholds, fpir_upper;
        `scores=True` adds every calibration probe's best score, descending (`.scores`)."""
        return self._send(calls.get_calibration(gallery, scores))

    def delete_calibration(self, gallery: str) -> Calibration:
        """Delete the gallery's own set: back to the bundle's (admin). Refused (409
        calibration_required) when the bundle's set cannot support the gallery's FPIR."""
        return self._send(calls.delete_calibration(gallery))

    # -- recognition --
    def identify(
        self,
        gallery: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
        *,
        top_k: int | None = None,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Identification:
        """One result per probe: "known" with a subject, or "unknown", at `fpir` (default
        the gallery's) or an explicit `threshold`."""
        return self._send(calls.identify(gallery, images, embeddings, top_k, fpir, threshold))

    def verify(
        self,
        gallery: str,
        subject_id: str,
        image: ImageInput | None = None,
        embedding: Embedding | None = None,
        *,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Verification:
        """One probe against one subject, with identify's calibrated threshold."""
        return self._send(calls.verify(gallery, subject_id, image, embedding, fpir, threshold))

    # -- export and import --
    def export_gallery(self, gallery: str, destination: str | os.PathLike[str] | IO[bytes]) -> int:
        """Download the gallery's archive (admin) to a path or a binary file; its size in
        bytes. A path is written whole or not at all (via `<path>.part`)."""
        call = calls.export_gallery(gallery)
        if isinstance(destination, str | os.PathLike):
            partial = calls.partial_path(destination)
            try:
                with partial.open("wb") as file:
                    size = self._download(call, file)
                partial.replace(destination)
            finally:
                partial.unlink(missing_ok=True)
            return size
        return self._download(call, destination)

    def _download(self, call: Call[None], file: IO[bytes]) -> int:
        size = 0
        try:
            with self._http.stream(call.method, call.path) as response:
                if not response.is_success:
                    response.read()
                    raise calls.error_from_response(call, response)
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as error:
            raise calls.error_from_transport(call, self.url, error) from None
        return size

    def import_gallery(self, archive: ImageInput, name: str | None = None) -> Gallery:
        """Recreate a gallery from an archive (a path, bytes or a binary file) (admin), named
        `name` or as in the archive."""
        return self._send(calls.import_gallery(archive, name))

    # -- models and migrations --
    def list_models(self) -> list[ModelInfo]:
        return self._send(calls.list_models())

    def register_model(self, path: str | os.PathLike[str]) -> str:
        """Register a bundle directory from the *server's* disk (admin); its name@version."""
        return self._send(calls.register_model(path))

    def migrate(self, gallery: str, model: str) -> str:
        """Start re-embedding the gallery with `model` (admin); the job id."""
        return self._send(calls.migrate(gallery, model))

    def get_job(self, job_id: str) -> Job:
        return self._send(calls.get_job(job_id))

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[Job], object] | None = None,
    ) -> Job:
        """Poll a job every `poll` seconds until it has succeeded or failed; the last state.

        `on_progress` is called with every state read. A job still running after `timeout`
        seconds raises OpenGalleryError with code `timeout` (the job goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                return job
            calls.job_deadline_passed(job, deadline, timeout)
            time.sleep(poll)

    # -- keys --
    def create_key(self, scope: str = "client", name: str | None = None) -> CreatedKey:
        """Create an API key (admin); `.key` is shown this once."""
        return self._send(calls.create_key(scope, name))

    def list_keys(self) -> list[KeyInfo]:
        """The service's keys (admin), never the keys themselves."""
        return self._send(calls.list_keys())

    def revoke_key(self, key_id: int) -> None:
        self._send(calls.revoke_key(key_id))

    # -- health --
    def health(self) -> Health:
        return self._send(calls.health())

    def ready(self) -> Readiness:
        """Readiness; `.ready` is False while the service is still loading (its 503)."""
        return self._send(calls.ready())

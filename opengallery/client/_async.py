"""The asyncio client: `Client`'s methods as coroutines (see `Client` for each one)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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


class AsyncClient(ClientBase):
    """As `Client`, with every method awaited; use `async with AsyncClient(...) as client`.

    Images given as paths or files are read when the request is built, in the event loop's
    thread.
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, **options
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as error:
                delay = self._retry_after_error(call, attempt, error)
                if delay is None:
                    raise calls.error_from_transport(call, self.url, error) from None
            else:
                delay = self._retry_after_response(call, attempt, response)
                if delay is None:
                    return calls.read_answer(call, response)
            await asyncio.sleep(delay)
            attempt += 1

    # -- galleries --
    async def create_gallery(
        self,
        name: str,
        fpir: float | None = None,
        model: str | None = None,
        scoring: str | None = None,
        keep_images: bool | None = None,
    ) -> Gallery:
        return await self._send(calls.create_gallery(name, fpir, model, scoring, keep_images))

    async def get_gallery(self, gallery: str) -> Gallery:
        return await self._send(calls.get_gallery(gallery))

    async def list_galleries(self) -> list[Gallery]:
        return await self._send(calls.list_galleries())

    async def delete_gallery(self, gallery: str) -> None:
        await self._send(calls.delete_gallery(gallery))

    # -- subjects --
    async def put_subject(
        self, gallery: str, subject_id: str, metadata: Mapping[str, Any] | None = None
    ) -> Subject:
        return await self._send(calls.put_subject(gallery, subject_id, metadata))

    async def get_subject(self, gallery: str, subject_id: str) -> Subject:
        return await self._send(calls.get_subject(gallery, subject_id))

    async def list_subjects(
        self, gallery: str, limit: int | None = None, cursor: str | None = None
    ) -> SubjectPage:
        return await self._send(calls.list_subjects(gallery, limit, cursor))

    async def iter_subjects(self, gallery: str, page_size: int = 100) -> AsyncIterator[Subject]:
        cursor: str | None = None
        while True:
            page = await self.list_subjects(gallery, limit=page_size, cursor=cursor)
            for subject in page.subjects:
                yield subject
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete_subject(self, gallery: str, subject_id: str) -> None:
        await self._send(calls.delete_subject(gallery, subject_id))

    # -- samples --
    async def enroll(
        self,
        gallery: str,
        subject_id: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
    ) -> Enrolment:
        return await self._send(calls.enroll(gallery, subject_id, images, embeddings))

    async def enroll_many(
        self, gallery: str, items: Sequence[BulkItem], *, create_subjects: bool = False
    ) -> BulkEnrolment:
        """Bulk enrolment: samples of many subjects in one request and one transaction.

        Each item (`BulkItem(subject_id, image=... | embedding=...)`) gets an outcome in
        order; unknown subjects are `subject_not_found` unless `create_subjects`. When every
        item is rejected the service answers 422: an OpenGalleryError whose
        `details["samples"]` lists the outcomes. The service takes at most 5000 items per
        request by default (more is a 413).
        """
        return await self._send(calls.enroll_many(gallery, items, create_subjects))

    async def delete_sample(self, gallery: str, subject_id: str, sample_id: int) -> None:
        await self._send(calls.delete_sample(gallery, subject_id, sample_id))

    # -- the gallery's own calibration set --
    async def add_calibration_samples(
        self,
        gallery: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
    ) -> CalibrationUpload:
        """Add non-mated probes (people NOT enrolled, from the deployment) to the gallery's
        own calibration set (admin). Each is accepted or rejected with a reason; content
        already in the set is not added twice. The set replaces the bundle's once it holds
        `calibration.needed` probes. All rejected: an OpenGalleryError (422)."""
        return await self._send(calls.add_calibration_samples(gallery, images, embeddings))

    async def list_calibration_samples(
        self, gallery: str, limit: int | None = None, cursor: str | None = None
    ) -> CalibrationSamplePage:
        """One page of the probes of the gallery's own set, by id (admin)."""
        return await self._send(calls.list_calibration_samples(gallery, limit, cursor))

    async def iter_calibration_samples(
        self, gallery: str, page_size: int = 100
    ) -> AsyncIterator[CalibrationSample]:
        """Every probe of the gallery's own set, fetched a page at a time (admin)."""
        cursor: str | None = None
        while True:
            page = await self.list_calibration_samples(gallery, limit=page_size, cursor=cursor)
            for sample in page.samples:
                yield sample
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_calibration(self, gallery: str, scores: bool = False) -> Calibration:
        """The calibration the gallery answers with: source, size, thresholds, fpir_upper;
        `scores=True` adds every calibration probe's best score, descending (`.scores`)."""
        return await self._send(calls.get_calibration(gallery, scores))

    async def delete_calibration(self, gallery: str) -> Calibration:
        """Delete the gallery's own set: back to the bundle's (admin). Refused (409
        calibration_required) when the bundle's set cannot support the gallery's FPIR."""
        return await self._send(calls.delete_calibration(gallery))

    # -- recognition --
    async def identify(
        self,
        gallery: str,
        images: Sequence[ImageInput] | None = None,
        embeddings: Sequence[Embedding] | None = None,
        *,
        top_k: int | None = None,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Identification:
        return await self._send(calls.identify(gallery, images, embeddings, top_k, fpir, threshold))

    async def verify(
        self,
        gallery: str,
        subject_id: str,
        image: ImageInput | None = None,
        embedding: Embedding | None = None,
        *,
        fpir: float | None = None,
        threshold: float | None = None,
    ) -> Verification:
        return await self._send(
            calls.verify(gallery, subject_id, image, embedding, fpir, threshold)
        )

    # -- export and import --
    async def export_gallery(
        self, gallery: str, destination: str | os.PathLike[str] | IO[bytes]
    ) -> int:
        call = calls.export_gallery(gallery)
        if isinstance(destination, str | os.PathLike):
            partial = calls.partial_path(destination)
            try:
                with partial.open("wb") as file:
                    size = await self._download(call, file)
                partial.replace(destination)
            finally:
                partial.unlink(missing_ok=True)
            return size
        return await self._download(call, destination)

    async def _download(self, call: Call[None], file: IO[bytes]) -> int:
        size = 0
        try:
            async with self._http.stream(call.method, call.path) as response:
                if not response.is_success:
                    await response.aread()
                    raise calls.error_from_response(call, response)
                async for chunk in response.aiter_bytes():
                    file.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as error:
            raise calls.error_from_transport(call, self.url, error) from None
        return size

    async def import_gallery(self, archive: ImageInput, name: str | None = None) -> Gallery:
        return await self._send(calls.import_gallery(archive, name))

    # -- models and migrations --
    async def list_models(self) -> list[ModelInfo]:
        return await self._send(calls.list_models())

    async def register_model(self, path: str | os.PathLike[str]) -> str:
        return await self._send(calls.register_model(path))

    async def migrate(self, gallery: str, model: str) -> str:
        return await self._send(calls.migrate(gallery, model))

    async def get_job(self, job_id: str) -> Job:
        return await self._send(calls.get_job(job_id))

    async def wait_for_job(
        self,
        job_id: str,
        *,
        poll: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[Job], object] | None = None,
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.finished:
                return job
            calls.job_deadline_passed(job, deadline, timeout)
            await asyncio.sleep(poll)

    # -- keys --
    async def create_key(self, scope: str = "client", name: str | None = None) -> CreatedKey:
        return await self._send(calls.create_key(scope, name))

    async def list_keys(self) -> list[KeyInfo]:
        return await self._send(calls.list_keys())

    async def revoke_key(self, key_id: int) -> None:
        await self._send(calls.revoke_key(key_id))

    # -- health --
    async def health(self) -> Health:
        return await self._send(calls.health())

    async def ready(self) -> Readiness:
        return await self._send(calls.ready())

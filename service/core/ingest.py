"""Ingest: uploads (image bytes, base64 text or embeddings) decoded and embedded by a model.

Each upload becomes a normalised vector or a rejection with its reason, one by one, so that
one bad image never sinks the others of a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.bundle import InputSpec
from models.preprocessing import image_to_pixels
from service.core.embedder import EmbeddingRejected, check_embeddings
from service.core.errors import ServiceError
from service.core.images import (
    ImageRejected,
    check_not_blank,
    decode_base64,
    decode_image,
    header_pixels,
)
from service.core.memory import release_free_memory
from service.core.models import LoadedModel
from service.settings import Settings


@dataclass(frozen=True)
class Upload:
    """One image or embedding from a request, before decoding.

    Exactly one of `image` (raw bytes), `image_base64` or `embedding` is set.
    """

    image: bytes | None = None
    image_base64: str | None = None
    embedding: list[float] | None = None
    name: str | None = None  # the multipart filename, for messages


@dataclass(frozen=True)
class Prepared:
    """An upload decoded and embedded, or the reason it was rejected."""

    vector: np.ndarray | None = None
    image: bytes | None = None
    content_sha256: str = ""
    source: str = "image"
    rejection: ImageRejected | EmbeddingRejected | None = None

    @property
    def rejection_code(self) -> str:
        return getattr(self.rejection, "code", "invalid_embedding")


class Ingest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check_count(self, uploads: list[Upload], what: str) -> None:
        if not uploads:
            raise ServiceError("no_input", f"no {what}: send images or embeddings")
        limit = self.settings.max_items_per_request
        if len(uploads) > limit:
            raise ServiceError(
                "too_many_items", f"{len(uploads)} {what} in one request; the limit is {limit}"
            )

    def prepare(self, model: LoadedModel, uploads: list[Upload]) -> list[Prepared]:
        """Decode and embed uploads; each becomes a vector or a rejection with its reason.

        Memory stays bounded: the pixels the headers declare are summed and checked against
        `max_request_pixels` before anything is decoded; each image is reduced to the model's
        input size as soon as it is decoded (a JPEG is decoded reduced), so one full-size
        image is held at a time; and the C heap is trimmed after a large request.
        """
        decoded = [
            None
            if upload.embedding is not None
            else upload.image
            if upload.image is not None
            else _base64_or_none(upload.image_base64)
            for upload in uploads
        ]
        declared = self._declared_pixels(decoded)
        try:
            return self._prepare(model, uploads, decoded)
        finally:
            if declared >= _TRIM_AFTER_PIXELS:
                release_free_memory()

    def _declared_pixels(self, decoded: Sequence[bytes | None]) -> int:
        """The pixels the images' headers declare in all; a ServiceError past the request's
        limit. An image over the per-image limit is left out: it is rejected on its own,
        undecoded."""
        per_image = [header_pixels(data) for data in decoded if data is not None]
        declared = sum(n for n in per_image if n <= self.settings.max_image_pixels)
        limit = self.settings.max_request_pixels
        if declared > limit:
            raise ServiceError(
                "too_many_pixels",
                f"the request's images hold {declared} pixels in all; the limit per request "
                f"is {limit}: send fewer or smaller images",
            )
        return declared

    def _prepare(
        self, model: LoadedModel, uploads: list[Upload], decoded: list[bytes | None]
    ) -> list[Prepared]:
        prepared: list[Prepared | None] = [None] * len(uploads)
        spec = model.bundle.manifest.input
        pixels: list[np.ndarray] = []
        image_slots: list[tuple[int, bytes, str]] = []
        embedding_slots = [
            slot for slot, upload in enumerate(uploads) if upload.embedding is not None
        ]
        if embedding_slots:  # checked together: one array operation, not one per vector
            checked = check_embeddings(
                [uploads[slot].embedding for slot in embedding_slots], model.dim
            )
            for row, slot in enumerate(embedding_slots):
                reason = checked.rejections[row]
                prepared[slot] = (
                    Prepared(rejection=EmbeddingRejected(reason))
                    if reason is not None
                    else Prepared(
                        vector=checked.unit[row],
                        content_sha256=hashlib.sha256(checked.raw[row].tobytes()).hexdigest(),
                        source="embedding",
                    )
                )
        for slot, upload in enumerate(uploads):
            if upload.embedding is not None:
                continue
            try:
                data = decoded[slot]
                if data is None:  # not valid base64: decode again for the reason
                    data = decode_base64(upload.image_base64 or "")
                pixels.append(self._input_pixels(data, spec))
                image_slots.append((slot, data, hashlib.sha256(data).hexdigest()))
            except (ImageRejected, EmbeddingRejected) as rejection:
                prepared[slot] = Prepared(rejection=rejection)
        if pixels:
            try:
                vectors = model.embedder.embed_pixels(np.stack(pixels))
            except EmbeddingRejected:
                # One bad output must not sink the batch: embed one by one to find it.
                vectors = None
            for position, (slot, data, digest) in enumerate(image_slots):
                try:
                    vector = (
                        vectors[position]
                        if vectors is not None
                        else model.embedder.embed_pixels(pixels[position][None])[0]
                    )
                    prepared[slot] = Prepared(vector=vector, image=data, content_sha256=digest)
                except EmbeddingRejected as rejection:
                    prepared[slot] = Prepared(rejection=rejection)
        return [item for item in prepared if item is not None]

    def probe_vectors(self, model: LoadedModel, uploads: list[Upload]) -> np.ndarray:
        """Every probe embedded, float32 [P, D]; the first unusable one is a ServiceError."""
        if uploads and all(upload.embedding is not None for upload in uploads):
            # Embeddings only: checked together, without the per-item records and content
            # hashes that enrolment keeps and a probe does not need.
            checked = check_embeddings([upload.embedding for upload in uploads], model.dim)
            for number, reason in enumerate(checked.rejections):
                if reason is not None:
                    raise ServiceError("invalid_embedding", f"probe {number}: {reason}")
            return checked.unit
        images = [upload.image for upload in uploads if upload.image is not None]
        if uploads and len(images) == len(uploads):
            vectors = self._image_probes(model, images)
            if vectors is not None:
                return vectors
        prepared = self.prepare(model, uploads)
        for number, item in enumerate(prepared):
            if item.rejection is not None:
                raise ServiceError(item.rejection_code, f"probe {number}: {item.rejection}")
        return np.stack([item.vector for item in prepared if item.vector is not None])

    def _input_pixels(self, data: bytes, spec: InputSpec) -> np.ndarray:
        """An image file decoded within the limits, refused if blank, and brought to the
        model's input size at once, so that its full-size pixels are freed on return."""
        image = decode_image(
            data,
            max_bytes=self.settings.max_image_bytes,
            max_pixels=self.settings.max_image_pixels,
            draft=(spec.color, (spec.width, spec.height)),
        )
        check_not_blank(image, spec.color)
        return image_to_pixels(image, spec)

    def _image_probes(self, model: LoadedModel, images: list[bytes]) -> np.ndarray | None:
        """Image probes embedded as prepare() embeds them (the same checks, pixels and
        vectors) without what only enrolment keeps: content hashes, the bytes, a record per
        item. None when one is unusable: prepare() then says which and why."""
        declared = self._declared_pixels(images)
        spec = model.bundle.manifest.input
        try:
            pixels = [self._input_pixels(data, spec) for data in images]
            return model.embedder.embed_pixels(np.stack(pixels))
        except (ImageRejected, EmbeddingRejected):
            return None
        finally:
            if declared >= _TRIM_AFTER_PIXELS:
                release_free_memory()


# After a request that decoded this many pixels, free C heap goes back to the system.
_TRIM_AFTER_PIXELS = 4_000_000


def _base64_or_none(text: str | None) -> bytes | None:
    try:
        return decode_base64(text or "")
    except ImageRejected:
        return None

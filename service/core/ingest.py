"""Ingest: uploads (image bytes, base64 text or embeddings) decoded and embedded by a model.

Each upload becomes a normalised vector or a rejection with its reason, one by one, so that
one bad image never sinks the others of a batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from service.core.embedder import EmbeddingRejected, check_embeddings
from service.core.errors import ServiceError
from service.core.images import ImageRejected, check_not_blank, decode_base64, decode_image
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
        """Decode and embed uploads; each becomes a vector or a rejection with its reason."""
        prepared: list[Prepared | None] = [None] * len(uploads)
        images = []
        image_slots: list[tuple[int, bytes, str]] = []
        embedding_slots = [
            slot for slot, upload in enumerate(uploads) if upload.embedding is not None
        ]
        if embedding_slots:
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
                data = (
                    upload.image
                    if upload.image is not None
                    else decode_base64(upload.image_base64 or "")
                )
                image = decode_image(
                    data,
                    max_bytes=self.settings.max_image_bytes,
                    max_pixels=self.settings.max_image_pixels,
                )
                check_not_blank(image, model.bundle.manifest.input.color)
                images.append(image)
                image_slots.append((slot, data, hashlib.sha256(data).hexdigest()))
            except ImageRejected as rejection:
                prepared[slot] = Prepared(rejection=rejection)
        if images:
            try:
                vectors = model.embedder.embed_images(images)
            except EmbeddingRejected:
                # One bad output must not sink the batch: embed one by one to find it.
                vectors = None
            for position, (slot, data, digest) in enumerate(image_slots):
                try:
                    vector = (
                        vectors[position]
                        if vectors is not None
                        else model.embedder.embed_images([images[position]])[0]
                    )
                    prepared[slot] = Prepared(vector=vector, image=data, content_sha256=digest)
                except EmbeddingRejected as rejection:
                    prepared[slot] = Prepared(rejection=rejection)
        return [item for item in prepared if item is not None]

    def probe_vectors(self, model: LoadedModel, uploads: list[Upload]) -> np.ndarray:
        """Every probe embedded, float32 [P, D]; the first unusable one is a ServiceError."""
        prepared = self.prepare(model, uploads)
        for number, item in enumerate(prepared):
            if item.rejection is not None:
                raise ServiceError(item.rejection_code, f"probe {number}: {item.rejection}")
        return np.stack([item.vector for item in prepared if item.vector is not None])

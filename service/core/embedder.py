"""One model's inference: a shared onnxruntime session, preprocessing from the manifest.

`InferenceSession.run` is thread-safe, so one session serves every request; callers run
`embed_*` in a worker thread (never on the event loop). Outputs are L2-normalised (the
bundle's metric is cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime
from PIL import Image

from models.bundle import Bundle
from models.preprocessing import image_to_pixels, pixels_to_array
from models.scoring import EmbeddingError, l2_normalise


class EmbeddingRejected(ValueError):
    """A probe or sample embedding that cannot be used (wrong size, not finite, zero)."""


class Embedder:
    def __init__(self, bundle: Bundle, *, threads: int = 0, batch_size: int = 64) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.model_id = bundle.manifest.model_id
        self.dim = bundle.manifest.embedding_dim
        self.batch_size = batch_size
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads must not spin: the machine is shared with FAISS and the server.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(bundle.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_name = self.session.get_inputs()[0].name
        self._output_name = bundle.manifest.output

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> float32 [N, D], L2-normalised."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        spec = self.manifest.input
        return self.embed_pixels(np.stack([image_to_pixels(image, spec) for image in images]))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels at the input size, [N, H, W, C] (or [N, H, W] for one channel) ->
        float32 [N, D], L2-normalised: what embed_images gives for those images."""
        if not len(pixels):
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        for start in range(0, len(pixels), self.batch_size):
            batch = pixels_to_array(pixels[start : start + self.batch_size], self.manifest.input)
            (output,) = self.session.run([self._output_name], {self._input_name: batch})
            outputs.append(np.asarray(output, dtype=np.float32))
        raw = np.concatenate(outputs)
        return normalise_rows(raw, what="model output")

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float32 [N, C, H, W] -> normalised float32 [N, D] (benchmarks)."""
        (output,) = self.session.run([self._output_name], {self._input_name: inputs})
        return normalise_rows(np.asarray(output, dtype=np.float32), what="model output")


@dataclass(frozen=True)
class CheckedEmbeddings:
    """Client-supplied embeddings, checked together."""

    unit: np.ndarray  # float32 [N, D], L2-normalised (rows of rejected embeddings are zero)
    raw: np.ndarray  # float32 [N, D] as sent (what their content hash is made of)
    rejections: list[str | None]  # why each one is unusable, or None


def check_embeddings(vectors: Sequence[Sequence[float]], dim: int) -> CheckedEmbeddings:
    """Many embeddings at once (one array operation, not one per vector), each usable or
    rejected with its reason: wrong dimension, not numbers, not finite, zero norm."""
    try:
        rows = np.asarray(vectors, dtype=np.float64)  # one conversion for flat lists of numbers
    except (TypeError, ValueError):
        rows = np.zeros(0)
    if rows.ndim == 2 and rows.shape == (len(vectors), dim):
        squares = np.einsum("ij,ij->i", rows, rows)
        if (np.isfinite(squares) & (squares > 0)).all():  # every one usable: the common case
            unit = l2_normalise(rows, "embeddings")
            return CheckedEmbeddings(unit, rows.astype(np.float32), [None] * len(vectors))
    # Some are unusable: one by one, for each one's reason.
    rejections: list[str | None] = [None] * len(vectors)
    rows = np.zeros((len(vectors), dim), dtype=np.float64)
    for number, vector in enumerate(vectors):
        try:
            array = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError):
            rejections[number] = "embedding must be a list of numbers"
            continue
        if array.ndim != 1:
            rejections[number] = "embedding must be a flat list of numbers"
        elif array.shape[0] != dim:
            rejections[number] = (
                f"embedding has dimension {array.shape[0]}; the gallery's model expects {dim}"
            )
        else:
            rows[number] = array
    squares = np.einsum("ij,ij->i", rows, rows)
    bad = ~(np.isfinite(squares) & (squares > 0))  # NaN, infinite or overflowing, or zero
    for number in np.flatnonzero(bad).tolist():
        if rejections[number] is None:
            rejections[number] = (
                "embedding is not finite (NaN or infinite values)"
                if not np.isfinite(rows[number]).all()
                else "embedding is all zeros (or its norm overflows) and cannot be normalised"
            )
        rows[number] = 0.0
    unit = l2_normalise(rows, "embeddings", allow_zero=True)  # rejected rows stay zero
    return CheckedEmbeddings(unit, rows.astype(np.float32), rejections)


def check_embedding(vector: Sequence[float], dim: int) -> np.ndarray:
    """One client-supplied embedding -> normalised float32 [D]; EmbeddingRejected if unusable."""
    checked = check_embeddings([vector], dim)
    if checked.rejections[0] is not None:
        raise EmbeddingRejected(checked.rejections[0])
    return checked.unit[0]


def normalise_rows(raw: np.ndarray, *, what: str) -> np.ndarray:
    """Rows -> unit length with the shared rule (models.scoring); EmbeddingRejected if a row is
    not finite or has zero (or overflowing) norm."""
    try:
        return l2_normalise(raw, what)
    except EmbeddingError as error:
        raise EmbeddingRejected(str(error)) from None

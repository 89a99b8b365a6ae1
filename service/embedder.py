"""One model's inference: a shared onnxruntime session, preprocessing from the manifest.

`InferenceSession.run` is thread-safe, so one session serves every request; callers run
`embed_*` in a worker thread (never on the event loop). Outputs are L2-normalised (the
bundle's metric is cosine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime
from PIL import Image

from models.bundle import Bundle
from models.preprocessing import images_to_array


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
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = images_to_array(images[start : start + self.batch_size], self.manifest.input)
            (output,) = self.session.run([self._output_name], {self._input_name: batch})
            outputs.append(np.asarray(output, dtype=np.float32))
        raw = np.concatenate(outputs)
        return normalise_rows(raw, what="model output")

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed float32 [N, C, H, W] -> normalised float32 [N, D] (benchmarks)."""
        (output,) = self.session.run([self._output_name], {self._input_name: inputs})
        return normalise_rows(np.asarray(output, dtype=np.float32), what="model output")

    def check_embeddings(self, vectors: Sequence[Sequence[float]]) -> np.ndarray:
        """Client-supplied embeddings -> normalised float32 [N, D]; EmbeddingRejected if bad."""
        return check_embedding_rows(vectors, self.dim)


def check_embedding_rows(vectors: Sequence[Sequence[float]], dim: int) -> np.ndarray:
    rows = []
    for number, vector in enumerate(vectors):
        rows.append(check_embedding(vector, dim, f"embedding {number}"))
    return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)


def check_embedding(vector: Sequence[float], dim: int, what: str = "embedding") -> np.ndarray:
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise EmbeddingRejected(f"{what} must be a list of numbers") from None
    if array.ndim != 1:
        raise EmbeddingRejected(f"{what} must be a flat list of numbers")
    if array.shape[0] != dim:
        raise EmbeddingRejected(
            f"{what} has dimension {array.shape[0]}; the gallery's model expects {dim}"
        )
    if not np.isfinite(array).all():
        raise EmbeddingRejected(f"{what} contains NaN or infinite values")
    norm = float(np.linalg.norm(array))
    if norm == 0.0 or not np.isfinite(norm):
        raise EmbeddingRejected(f"{what} has zero (or overflowing) norm and cannot be normalised")
    return (array / norm).astype(np.float32)


def normalise_rows(raw: np.ndarray, *, what: str) -> np.ndarray:
    norms = np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True)
    if not np.isfinite(raw).all() or (norms == 0).any():
        raise EmbeddingRejected(f"{what} is not finite or is all zeros for an input")
    return (raw / norms).astype(np.float32)

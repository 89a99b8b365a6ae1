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


def check_embedding(vector: Sequence[float], dim: int, what: str = "embedding") -> np.ndarray:
    """A client-supplied embedding -> normalised float32 [D]; EmbeddingRejected if unusable."""
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
    return normalise_rows(array[None, :], what=what)[0]


def normalise_rows(raw: np.ndarray, *, what: str) -> np.ndarray:
    """Rows -> unit length with the shared rule (models.scoring); EmbeddingRejected if a row is
    not finite or has zero (or overflowing) norm."""
    try:
        return l2_normalise(raw, what)
    except EmbeddingError as error:
        raise EmbeddingRejected(str(error)) from None

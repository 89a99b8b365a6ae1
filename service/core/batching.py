"""Dynamic batching: concurrent requests share onnxruntime calls.

Each request thread preprocesses its own images, then queues the array. One worker thread per
model takes the queue: after the first request arrives it waits at most `max_wait` for more,
stops early once `max_batch_size` images are queued, runs ONE onnxruntime call on the
concatenation, and hands each request its own rows. Requests at least `max_batch_size` images
long skip the queue (they are a batch already; e.g. a migration's chunks). Each request
normalises its own rows, so a bad output row fails only the request it belongs to.

The network maps each input row to its output row independently (batch norm is frozen in an
exported bundle), so a batched call returns what per-request calls return; see
tests/service/test_batching.py for the exact comparison.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models.bundle import Bundle
from models.preprocessing import pixels_to_array
from service.core.embedder import Embedder, normalise_rows


class BatcherClosed(RuntimeError):
    pass


@dataclass
class _Request:
    inputs: np.ndarray
    arrived: float
    done: threading.Event = field(default_factory=threading.Event)
    output: np.ndarray | None = None
    error: BaseException | None = None


class DynamicBatcher:
    """A queue in front of `run` (float32 [N, ...] -> [N, D]) that merges concurrent calls."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_wait_s: float,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._condition = threading.Condition()
        self._closed = False
        self.batches = 0  # onnxruntime calls made by the worker (for tests and metrics)
        self.batched_rows = 0
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Run `inputs` (possibly with other callers' rows); blocks until its rows are back."""
        if len(inputs) == 0:
            return self._run(inputs)
        if len(inputs) >= self.max_batch_size:
            return self._run(inputs)
        request = _Request(inputs, time.monotonic())
        with self._condition:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            self._pending.append(request)
            self._pending_rows += len(inputs)
            self._condition.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.output is not None
        return request.output

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._worker.join(timeout=30)

    # -- worker --
    def _next_batch(self) -> list[_Request] | None:
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if not self._pending:
                return None  # closed and drained
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_rows < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = [self._pending.popleft()]
            rows = len(batch[0].inputs)
            while self._pending and rows + len(self._pending[0].inputs) <= self.max_batch_size:
                request = self._pending.popleft()
                batch.append(request)
                rows += len(request.inputs)
            self._pending_rows -= rows
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                inputs = (
                    batch[0].inputs
                    if len(batch) == 1
                    else np.concatenate([request.inputs for request in batch])
                )
                outputs = self._run(inputs)
                self.batches += 1
                self.batched_rows += len(inputs)
                start = 0
                for request in batch:
                    stop = start + len(request.inputs)
                    request.output = outputs[start:stop]
                    start = stop
            except BaseException as error:  # every caller of the batch learns why
                for request in batch:
                    request.error = error
            finally:
                for request in batch:
                    request.done.set()


class BatchingEmbedder(Embedder):
    """An Embedder whose small calls go through a `DynamicBatcher`."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int = 0,
        batch_size: int = 64,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
    ) -> None:
        super().__init__(bundle, threads=threads, batch_size=batch_size)
        self.batcher = DynamicBatcher(
            self._run_raw,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_ms / 1000.0,
            name=f"batcher-{self.model_id}",
        )

    def _run_raw(self, inputs: np.ndarray) -> np.ndarray:
        (output,) = self.session.run([self._output_name], {self._input_name: inputs})
        return np.asarray(output, dtype=np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0 or len(pixels) >= self.batcher.max_batch_size:
            return super().embed_pixels(pixels)
        inputs = pixels_to_array(pixels, self.manifest.input)
        return normalise_rows(self.batcher.submit(inputs), what="model output")

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return normalise_rows(self.batcher.submit(inputs), what="model output")

    def close(self) -> None:
        self.batcher.close()

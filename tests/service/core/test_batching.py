"""Dynamic batching returns exactly what unbatched inference returns, within its limits."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.bundle import load_bundle
from service.api.app import create_app
from service.core.batching import BatcherClosed, BatchingEmbedder, DynamicBatcher
from service.core.embedder import Embedder, EmbeddingRejected
from service.settings import Settings
from service.testing import png_bytes

from ..conftest import ADMIN_KEY
from ..redeploy import enrol_images, enrolled_images, identify_images, reference_embeddings


def run_concurrently(calls: list, timeout: float = 30.0) -> list:
    """Start every call at once (a barrier), return their results or exceptions in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def worker(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = calls[slot]()
        except Exception as error:
            results[slot] = error

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return results


def test_concurrent_batched_embeddings_equal_unbatched_ones(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    plain = Embedder(bundle, threads=1)
    batching = BatchingEmbedder(bundle, threads=1, max_batch_size=8, max_wait_ms=50)
    try:
        requests = [
            [Image.open(BytesIO(png_bytes(100 * caller + k))) for k in range(1 + caller % 3)]
            for caller in range(24)
        ]
        batched = run_concurrently(
            [lambda images=images: batching.embed_images(images) for images in requests]
        )
        rows = sum(len(images) for images in requests)
        # Batches were shared (fewer onnxruntime calls than requests), none over the limit.
        assert batching.batcher.batched_rows == rows
        assert batching.batcher.batches < len(requests)
        for images, result in zip(requests, batched, strict=True):
            # Exact equality: each output row of the network depends only on its input row,
            # and onnxruntime's CPU kernels accumulate a row in the same order whatever the
            # batch size (checked here for the linear bundle; the same held for an exported
            # LeNet++ at batch sizes 1-64, see docs/redeploy.md).
            assert np.array_equal(result, plain.embed_images(images))
            # And both are the network's answer (numpy reference, float32 rounding).
            encoded = [png_bytes_of(image) for image in images]
            np.testing.assert_allclose(
                result, reference_embeddings(bundle, encoded), atol=1e-5, rtol=0
            )
    finally:
        batching.close()


def png_bytes_of(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_batches_respect_the_size_limit_and_large_calls_bypass_the_queue() -> None:
    weights = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    sizes: list[int] = []
    lock = threading.Lock()

    def run(inputs: np.ndarray) -> np.ndarray:
        with lock:
            sizes.append(len(inputs))
        return inputs @ weights

    batcher = DynamicBatcher(run, max_batch_size=4, max_wait_s=0.05)
    try:
        rng = np.random.default_rng(1)
        inputs = [rng.standard_normal((1 + i % 3, 5)).astype(np.float32) for i in range(16)]
        inputs.append(rng.standard_normal((9, 5)).astype(np.float32))  # over the limit
        results = run_concurrently([lambda x=x: batcher.submit(x) for x in inputs])
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result, x @ weights)
        assert sorted(sizes)[-1] == 9 and sorted(sizes)[-2] <= 4  # only the bypass is over
        assert sum(sizes) == sum(len(x) for x in inputs)
        assert len(sizes) < len(inputs)
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(np.zeros((1, 5), dtype=np.float32))


def test_an_error_fails_only_the_batch_it_happened_in() -> None:
    calls = {"count": 0}

    def run(inputs: np.ndarray) -> np.ndarray:
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("inference failed")
        return inputs * 2

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="inference failed"):
            batcher.submit(np.ones((1, 2), dtype=np.float32))
        np.testing.assert_array_equal(batcher.submit(np.ones((2, 2), dtype=np.float32)), 2.0)
    finally:
        batcher.close()


def test_a_bad_row_fails_only_its_own_request(bundle_path: Path) -> None:
    batching = BatchingEmbedder(
        load_bundle(bundle_path), threads=1, max_batch_size=8, max_wait_ms=50
    )
    try:
        good = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
        bad = np.full((1, 1, 28, 28), np.nan, dtype=np.float32)
        results = run_concurrently(
            [lambda: batching.embed_inputs(good), lambda: batching.embed_inputs(bad)]
        )
        assert batching.batcher.batches == 1  # they shared a batch
        assert isinstance(results[1], EmbeddingRejected)
        assert np.array_equal(results[0], Embedder(load_bundle(bundle_path)).embed_inputs(good))
    finally:
        batching.close()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENGALLERY_BATCHING", "true")
    monkeypatch.setenv("OPENGALLERY_BATCH_MAX_SIZE", "16")
    monkeypatch.setenv("OPENGALLERY_BATCH_MAX_WAIT_MS", "0.5")
    settings = Settings()
    assert (settings.batching, settings.batch_max_size, settings.batch_max_wait_ms) == (
        True,
        16,
        0.5,
    )


def test_the_service_answers_the_same_with_and_without_batching(settings: Settings) -> None:
    images = enrolled_images(5, 2)
    probes = [png_bytes(seed) for seed in range(900, 906)] + images["s3"]
    answers = []
    for batching in (False, True):
        configured = settings.model_copy(
            update={"batching": batching, "data_dir": settings.data_dir / str(batching)}
        )
        with TestClient(create_app(configured)) as client:
            client.headers["X-API-Key"] = ADMIN_KEY
            client.post("/v1/galleries", json={"name": "g"})
            enrol_images(client, "g", images)
            embedder = client.app.state.opengallery.models.all()[0].embedder  # type: ignore[attr-defined]
            assert isinstance(embedder, BatchingEmbedder) is batching
            answers.append(identify_images(client, "g", probes, top_k=3).json())
    assert answers[0] == answers[1]

"""Helpers for the redeploy tests: a numpy reference of what each random network answers,
image enrolment, job polling, and a bundle whose network outputs NaN."""

from __future__ import annotations

import base64
import dataclasses
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.bundle import Bundle, load_bundle, write_bundle
from models.preprocessing import images_to_array
from models.testing import make_random_bundle, random_embeddings
from service.testing import png_bytes


def reference_embeddings(bundle: Bundle, images: list[bytes]) -> np.ndarray:
    """What a `make_random_bundle` network returns, computed with numpy (not onnxruntime)."""
    arrays = images_to_array([Image.open(BytesIO(data)) for data in images], bundle.manifest.input)
    extra = bundle.manifest.extra or {}
    vectors = random_embeddings(
        arrays, seed=int(extra["seed"]), embedding_dim=bundle.manifest.embedding_dim
    )
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def expected_top(
    bundle: Bundle, enrolled: dict[str, list[bytes]], probes: list[bytes]
) -> tuple[list[str], np.ndarray]:
    """Per probe: the subject with the best max-over-samples cosine, and the margin to the
    second subject (so tests can pick probes whose answer is not a near tie)."""
    subjects = list(enrolled)
    probe_vectors = reference_embeddings(bundle, probes)
    scores = np.stack(
        [
            (reference_embeddings(bundle, enrolled[s]) @ probe_vectors.T).max(axis=0)
            for s in subjects
        ]
    )  # [S, P]
    order = np.sort(scores, axis=0)
    best = [subjects[i] for i in scores.argmax(axis=0)]
    return best, order[-1] - order[-2]


def distinguishing_probes(
    old: Bundle, new: Bundle, enrolled: dict[str, list[bytes]], count: int, margin: float = 0.02
) -> tuple[list[bytes], list[str], list[str]]:
    """`count` probe images whose expected top subject differs between the two networks, each
    with a clear margin in both: an answer from the wrong model (or a mixed index) shows."""
    candidates = [png_bytes(10_000 + seed) for seed in range(400)]
    old_top, old_margin = expected_top(old, enrolled, candidates)
    new_top, new_margin = expected_top(new, enrolled, candidates)
    chosen = [
        i
        for i in range(len(candidates))
        if old_top[i] != new_top[i] and old_margin[i] > margin and new_margin[i] > margin
    ][:count]
    assert len(chosen) == count, f"only {len(chosen)} distinguishing probes"
    return (
        [candidates[i] for i in chosen],
        [old_top[i] for i in chosen],
        [new_top[i] for i in chosen],
    )


def enrolled_images(subjects: int, per_subject: int, offset: int = 0) -> dict[str, list[bytes]]:
    return {
        f"s{number}": [png_bytes(offset + number * per_subject + k) for k in range(per_subject)]
        for number in range(subjects)
    }


def enrol_images(client: Any, gallery: str, images: dict[str, list[bytes]]) -> None:
    """Enrol each subject's images (JSON base64, up to 64 per request); asserts success."""
    for subject, blobs in images.items():
        response = client.put(f"/v1/galleries/{gallery}/subjects/{subject}")
        assert response.status_code in (200, 201), response.text
        for start in range(0, len(blobs), 64):
            encoded = [base64.b64encode(b).decode() for b in blobs[start : start + 64]]
            response = client.post(
                f"/v1/galleries/{gallery}/subjects/{subject}/samples", json={"images": encoded}
            )
            assert response.status_code == 201, response.text
            statuses = {s["status"] for s in response.json()["samples"]}
            assert statuses == {"enrolled"}, response.text


def identify_images(client: Any, gallery: str, probes: list[bytes], **data: Any) -> Any:
    return client.post(
        f"/v1/galleries/{gallery}/identify",
        json={"images": [base64.b64encode(p).decode() for p in probes], "top_k": 1, **data},
    )


def wait_job(client: Any, job_id: str, until: Any = None, timeout: float = 60.0) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until `until(job)` holds (default: finished)."""
    until = until or (lambda job: job["status"] != "running")
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {job}")
        time.sleep(0.02)


def nan_bundle(out_dir: Path, *, version: str = "nan") -> Bundle:
    """A valid bundle (checksum, schema, finite calibration) whose network outputs NaN."""
    import onnx
    from onnx import numpy_helper

    template = make_random_bundle(out_dir.parent / f"{out_dir.name}-template", seed=3)
    model = onnx.load(str(template.onnx_path))
    weights = numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.full_like(weights, np.nan), name=model.graph.initializer[0].name)
    )
    manifest = dataclasses.replace(template.manifest, version=version)
    write_bundle(out_dir, manifest, model.SerializeToString(), template.load_calibration())
    return load_bundle(out_dir)

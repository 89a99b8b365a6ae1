"""Per-gallery thresholds: calibrated on the bundle's non-mated set against the current gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle

from ..conftest import DIM


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def enrol(client: TestClient, vectors: np.ndarray, start: int) -> None:
    for offset, vector in enumerate(vectors):
        subject = f"s{start + offset:05d}"
        assert client.put(f"/v1/galleries/g/subjects/{subject}").status_code == 201
        response = client.post(
            f"/v1/galleries/g/subjects/{subject}/samples", json={"embeddings": [vector.tolist()]}
        )
        assert response.status_code == 201


def identify(client: TestClient, probes: np.ndarray, **fields: object) -> list[dict]:
    results = []
    for start in range(0, len(probes), 64):
        response = client.post(
            "/v1/galleries/g/identify",
            json={"embeddings": probes[start : start + 64].tolist(), "top_k": 1, **fields},
        )
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


def kth_largest_top1(calibration: np.ndarray, gallery: np.ndarray, fpir: float) -> float:
    """Independent reference: design §2 rule with float64 numpy scores (no ties here)."""
    top1 = (calibration.astype(np.float64) @ gallery.T).max(axis=1)
    k = int(np.floor(fpir * len(top1)))
    return float(np.sort(top1)[::-1][k - 1])


def test_realised_fpir_on_calibration_set_is_at_most_target(
    client: TestClient, bundle_path: Path
) -> None:
    rng = np.random.default_rng(10)
    calibration = load_bundle(bundle_path).load_calibration()
    # Gallery embeddings near the calibration cloud so that non-mated scores are high.
    gallery = calibration[rng.choice(len(calibration), 300, replace=False)] + 0.3 * unit(rng, 300)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    assert client.post("/v1/galleries", json={"name": "g", "fpir": 0.05}).status_code == 201
    enrol(client, gallery, 0)
    # Probes: calibration embeddings not enrolled (the enrolled ones were perturbed).
    results = identify(client, calibration)
    known = sum(result["decision"] == "known" for result in results)
    assert known <= 0.05 * len(calibration)
    assert known >= 0.05 * len(calibration) - 2  # the largest FPIR <= target, not a loose one
    expected = kth_largest_top1(calibration, gallery, 0.05)
    assert results[0]["threshold"] == pytest.approx(expected, abs=1e-5)
    # An explicit threshold reports the FPIR it gives on the calibration set.
    top1 = (calibration.astype(np.float64) @ gallery.T).max(axis=1)
    chosen = float(np.quantile(top1, 0.8))
    explicit = identify(client, calibration[:3], threshold=chosen)
    assert explicit[0]["fpir"] == pytest.approx(np.mean(top1 >= chosen), abs=2 / len(top1))


def test_threshold_grows_with_gallery_size(client: TestClient, bundle_path: Path) -> None:
    rng = np.random.default_rng(11)
    calibration = load_bundle(bundle_path).load_calibration()
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    probe = unit(rng, 1)
    thresholds = []
    enrolled = np.zeros((0, DIM))
    for size in (10, 100, 400):
        new = unit(rng, size - len(enrolled))
        enrol(client, new, len(enrolled))
        enrolled = np.vstack([enrolled, new])
        threshold = identify(client, probe)[0]["threshold"]
        assert threshold == pytest.approx(kth_largest_top1(calibration, enrolled, 0.01), abs=1e-5)
        thresholds.append(threshold)
    assert thresholds[0] < thresholds[1] < thresholds[2]
    # Deleting subjects lowers it again (the cache follows the gallery both ways).
    for index in range(100, 400):
        assert client.delete(f"/v1/galleries/g/subjects/s{index:05d}").status_code == 204
    assert identify(client, probe)[0]["threshold"] == pytest.approx(thresholds[1], abs=1e-6)


def test_requested_fpir_changes_threshold(client: TestClient) -> None:
    rng = np.random.default_rng(12)
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    enrol(client, unit(rng, 50), 0)
    probe = unit(rng, 1)
    strict = identify(client, probe, fpir=0.005)[0]
    loose = identify(client, probe, fpir=0.2)[0]
    assert (strict["fpir"], loose["fpir"]) == (0.005, 0.2)
    assert strict["threshold"] > loose["threshold"]


def test_default_fpir_follows_a_small_calibration_set(tmp_path: Path) -> None:
    from models.testing import make_random_bundle
    from service.api.app import create_app
    from service.settings import Settings

    from ..conftest import ADMIN_KEY

    bundle = make_random_bundle(tmp_path / "small", embedding_dim=DIM, calibration_size=500)
    settings = Settings(data_dir=tmp_path / "data", model=bundle.path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as small:
        small.headers["X-API-Key"] = ADMIN_KEY
        # 500 non-mated searches support an FPIR of 10/500 = 0.02 at best: an unnamed FPIR
        # becomes that, a named 0.01 is refused with the reason.
        created = small.post("/v1/galleries", json={"name": "g"})
        assert created.status_code == 201 and created.json()["fpir"] == 0.02
        refused = small.post("/v1/galleries", json={"name": "h", "fpir": 0.01})
        assert refused.status_code == 422
        assert "1000" in refused.json()["error"]["message"]
        small.put("/v1/galleries/g/subjects/a")
        small.post("/v1/galleries/g/subjects/a/samples", json={"embeddings": [[1.0] * DIM]})
        result = small.post("/v1/galleries/g/identify", json={"embeddings": [[1.0] * DIM]}).json()[
            "results"
        ][0]
        assert result["fpir"] == 0.02 and result["decision"] == "known"

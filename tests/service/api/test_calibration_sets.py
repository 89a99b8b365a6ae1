"""A gallery's own calibration set over HTTP: uploads in every body form, per-item rejections,
when the set takes effect, thresholds with fpir_upper against the brute-force rule, identify
answering from it, idempotence, restart, deletion, migration, and the usual 4xx errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.bundle import load_bundle
from models.calibration import fpir_upper_bound, realised_fpir, threshold_for_fpir
from models.scoring import SubjectScorer, l2_normalise
from models.testing import make_random_bundle
from service.api.app import create_app
from service.settings import Settings
from service.testing import png_bytes

from ..conftest import ADMIN_KEY, DIM, unit
from ..redeploy import wait_job


def enrol(client: TestClient, gallery: str, vectors: np.ndarray) -> None:
    for number, vector in enumerate(vectors):
        client.put(f"/v1/galleries/{gallery}/subjects/s{number:03d}")
        response = client.post(
            f"/v1/galleries/{gallery}/subjects/s{number:03d}/samples",
            json={"embeddings": [vector.tolist()]},
        )
        assert response.status_code == 201


def upload(client: TestClient, vectors: np.ndarray, gallery: str = "g") -> dict:
    body = {}
    for start in range(0, len(vectors), 64):
        response = client.post(
            f"/v1/galleries/{gallery}/calibration/samples",
            json={"embeddings": vectors[start : start + 64].tolist()},
        )
        assert response.status_code == 201, response.text
        body = response.json()
    return body


def expected_points(calibration: np.ndarray, gallery: np.ndarray, fpirs: list[float]) -> list:
    """The brute-force rule: SubjectScorer top-1 of every probe, then threshold_for_fpir."""
    subjects = [f"s{i:03d}" for i in range(len(gallery))]
    _, scores = SubjectScorer(gallery, subjects).top1(l2_normalise(calibration))
    points = []
    for fpir in fpirs:
        threshold = threshold_for_fpir(scores, fpir)
        accepted = round(realised_fpir(scores, threshold) * len(scores))
        points.append((fpir, threshold, fpir_upper_bound(accepted, len(scores))))
    return points


def check_points(body: dict, expected: list) -> None:
    assert [p["fpir"] for p in body["thresholds"]] == [fpir for fpir, _, _ in expected]
    for point, (_, threshold, upper) in zip(body["thresholds"], expected, strict=True):
        assert point["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert point["fpir_upper"] == pytest.approx(upper, rel=1e-9)


def test_the_gallery_set_takes_effect_once_it_supports_the_gallery_fpir(
    client: TestClient, bundle_path: Path
) -> None:
    rng = np.random.default_rng(20)
    assert client.post("/v1/galleries", json={"name": "g", "fpir": 0.1}).status_code == 201
    gallery = unit(rng, 60)
    enrol(client, "g", gallery)
    bundle = load_bundle(bundle_path).load_calibration()
    before = client.get("/v1/galleries/g/calibration").json()
    assert (before["source"], before["size"], before["gallery_set_size"]) == ("bundle", 2000, 0)
    assert before["needed"] == 100 and before["min_fpir"] == pytest.approx(10 / 2000)
    check_points(before, expected_points(bundle, gallery, [0.01, 0.1]))  # 0.001 needs 10000

    # Strangers of "this deployment": near the enrolled people (harder than the bundle's).
    strangers = gallery[rng.integers(0, 60, 150)] + 0.5 * unit(rng, 150)
    first = upload(client, strangers[:64])
    assert len(first["samples"]) == 64 and {s["status"] for s in first["samples"]} == {"accepted"}
    assert (first["source"], first["gallery_set_size"], first["size"]) == ("bundle", 64, 2000)
    assert first["model"] == "random@1"
    second = upload(client, strangers[32:96])  # half of it re-sent
    assert [s["duplicate"] for s in second["samples"]] == [True] * 32 + [False] * 32
    assert (second["source"], second["gallery_set_size"]) == ("bundle", 96)
    third = upload(client, strangers[96:120])
    assert (third["source"], third["size"], third["gallery_set_size"]) == ("gallery", 120, 120)
    assert third["min_fpir"] == pytest.approx(10 / 120)
    expected = expected_points(strangers[:120], gallery, [0.1])
    check_points(third, expected)
    assert client.get("/v1/galleries/g/calibration").json() == {
        k: v for k, v in third.items() if k not in {"samples", "model"}
    }
    # Identify and verify answer from it; the gallery's details say so.
    probe = {"embeddings": [unit(rng, 1)[0].tolist()]}
    result = client.post("/v1/galleries/g/identify", json=probe).json()["results"][0]
    assert result["threshold"] == pytest.approx(expected[0][1], abs=1e-6)
    assert result["fpir_upper"] == pytest.approx(expected[0][2], rel=1e-9)
    small = client.post("/v1/galleries/g/identify", json={**probe, "fpir": 0.01})
    assert small.status_code == 422 and "1000" in small.json()["error"]["message"]
    assert "gallery" in small.json()["error"]["message"]
    details = client.get("/v1/galleries/g").json()["calibration"]
    assert details == {
        "source": "gallery",
        "size": 120,
        "min_fpir": pytest.approx(10 / 120),
        "fpir": 0.1,
        "threshold": pytest.approx(expected[0][1], abs=1e-6),
        "fpir_upper": pytest.approx(expected[0][2], rel=1e-9),
        "gallery_set_size": 120,
        "needed": 100,
    }
    # Writes keep it current: the thresholds follow an enrolment and a deletion.
    extra = unit(rng, 5)
    for number, vector in enumerate(extra):
        client.put(f"/v1/galleries/g/subjects/s{60 + number:03d}")
        client.post(
            f"/v1/galleries/g/subjects/s{60 + number:03d}/samples",
            json={"embeddings": [vector.tolist()]},
        )
    assert client.delete("/v1/galleries/g/subjects/s000").status_code == 204
    now = np.vstack([gallery[1:], extra])
    subjects = [f"s{i:03d}" for i in range(1, 65)]
    _, scores = SubjectScorer(now, subjects).top1(l2_normalise(strangers[:120]))
    got = client.get("/v1/galleries/g/calibration").json()["thresholds"][0]["threshold"]
    assert got == pytest.approx(threshold_for_fpir(scores, 0.1), abs=1e-6)
    # DELETE goes back to the bundle's set.
    cleared = client.delete("/v1/galleries/g/calibration")
    assert cleared.status_code == 200
    assert (cleared.json()["source"], cleared.json()["gallery_set_size"]) == ("bundle", 0)
    assert client.get("/v1/galleries/g/calibration").json()["size"] == 2000


def test_the_gallery_set_survives_a_restart(settings: Settings) -> None:
    rng = np.random.default_rng(21)
    with TestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        client.post("/v1/galleries", json={"name": "g", "fpir": 0.1})
        enrol(client, "g", unit(rng, 20))
        upload(client, unit(rng, 100))
        before = client.get("/v1/galleries/g/calibration").json()
        assert before["source"] == "gallery"
    with TestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.get("/v1/galleries/g/calibration").json() == before


def png_b64(seed: int) -> str:
    return base64.b64encode(png_bytes(seed)).decode("ascii")


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_items_are_rejected_one_by_one(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    url = "/v1/galleries/g/calibration/samples"
    good = unit(np.random.default_rng(22), 1)[0].tolist()
    response = client.post(
        url,
        content=(
            '{"embeddings": [' + str(good) + ", [1.0, 2.0], [NaN" + ", 0.0" * (DIM - 1) + "]]}"
        ),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    samples = response.json()["samples"]
    assert [s["status"] for s in samples] == ["accepted", "rejected", "rejected"]
    assert "dimension" in samples[1]["reason"] and samples[1]["code"] == "invalid_embedding"
    assert "finite" in samples[2]["reason"] or "NaN" in samples[2]["reason"]
    assert response.json()["gallery_set_size"] == 1
    # Images: multipart and base64, with a corrupt and a blank one among them.
    files = [
        ("images", ("a.png", png_bytes(1), "image/png")),
        ("images", ("bad.png", b"not an image at all", "image/png")),
        ("images", ("blank.png", blank_png(), "image/png")),
    ]
    response = client.post(url, files=files)
    assert response.status_code == 201
    assert [(s["status"], s["code"]) for s in response.json()["samples"]] == [
        ("accepted", None),
        ("rejected", "invalid_image"),
        ("rejected", "blank_image"),
    ]
    encoded = client.post(url, json={"images": [png_b64(2), png_b64(1)]})
    assert encoded.status_code == 201
    assert [s["duplicate"] for s in encoded.json()["samples"]] == [False, True]
    assert encoded.json()["gallery_set_size"] == 3
    # The set, listed a page at a time (what `opengallery calibrate` resumes from).
    page = client.get("/v1/galleries/g/calibration/samples", params={"limit": 2}).json()
    assert [s["source"] for s in page["samples"]] == ["embedding", "image"]
    assert page["samples"][1]["has_image"] is True and page["next_cursor"]
    rest = client.get(
        "/v1/galleries/g/calibration/samples", params={"cursor": page["next_cursor"]}
    ).json()
    assert len(rest["samples"]) == 1 and rest["next_cursor"] is None
    assert rest["samples"][0]["content_sha256"] == encoded.json()["samples"][0]["content_sha256"]
    # "²" is a digit to str.isdigit() but not to int().
    for params, code in [
        ({"cursor": "x"}, "invalid_cursor"),
        ({"cursor": "²"}, "invalid_cursor"),
        ({"limit": 100000}, "invalid_limit"),
    ]:
        bad = client.get("/v1/galleries/g/calibration/samples", params=params)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == code
    # Everything rejected: a 422 listing why; nothing stored.
    refused = client.post(url, json={"embeddings": [[1.0, 2.0]]})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_embedding"
    assert client.get("/v1/galleries/g/calibration").json()["gallery_set_size"] == 3


def test_request_errors(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    url = "/v1/galleries/g/calibration/samples"
    for body, status, code in [
        ({}, 422, "no_input"),
        ({"embeddings": []}, 422, "no_input"),
        ({"images": [], "embeddings": []}, 422, "validation_error"),
        ({"vectors": [[1.0]]}, 422, "validation_error"),
    ]:
        response = client.post(url, json=body)
        assert response.status_code == status and response.json()["error"]["code"] == code
    empty = client.post(url, content=b"", headers={"Content-Type": "application/json"})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "invalid_json"
    too_many = client.post(url, json={"embeddings": [[1.0] * DIM] * 65})
    assert too_many.status_code == 413
    for method, path in [
        ("post", "/v1/galleries/nope/calibration/samples"),
        ("get", "/v1/galleries/nope/calibration"),
        ("delete", "/v1/galleries/nope/calibration"),
    ]:
        kwargs = {"json": {"embeddings": [[1.0] * DIM]}} if method == "post" else {}
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    key = client.post("/v1/keys", json={"scope": "client"}).json()["key"]
    as_client = {"X-API-Key": key}
    forbidden = client.post(url, json={"embeddings": [[1.0] * DIM]}, headers=as_client)
    assert forbidden.status_code == 403
    assert client.delete("/v1/galleries/g/calibration", headers=as_client).status_code == 403
    assert client.get("/v1/galleries/g/calibration", headers=as_client).status_code == 200
    listing = client.get("/v1/galleries/g/calibration/samples", headers=as_client)
    assert listing.status_code == 403
    assert client.put("/v1/galleries/g/calibration/samples").status_code == 405
    assert client.get("/v1/galleries/g/calibration").json()["gallery_set_size"] == 0


def test_migration_re_embeds_the_set_and_a_needed_set_cannot_be_deleted(
    client: TestClient, tmp_path: Path
) -> None:
    # The target model's own set (50 searches) cannot calibrate the gallery's fpir 0.1; the
    # gallery's 100 probes, re-embedded, can.
    small = make_random_bundle(tmp_path / "small", seed=4, version="small", calibration_size=50)
    assert client.post("/v1/models", json={"path": str(small.path)}).status_code == 201
    client.post("/v1/galleries", json={"name": "g", "fpir": 0.1})
    client.put("/v1/galleries/g/subjects/a")
    client.post("/v1/galleries/g/subjects/a/samples", json={"images": [png_b64(1000)]})
    url = "/v1/galleries/g/calibration/samples"
    for start in range(0, 100, 50):
        images = [png_b64(seed) for seed in range(start, start + 50)]
        assert client.post(url, json={"images": images}).status_code == 201
    assert client.get("/v1/galleries/g/calibration").json()["source"] == "gallery"
    job = client.post("/v1/galleries/g/migrate", json={"model": "random@small"})
    assert job.status_code == 202, job.text
    assert wait_job(client, job.json()["job_id"])["status"] == "succeeded"
    after = client.get("/v1/galleries/g/calibration").json()
    assert (after["source"], after["size"]) == ("gallery", 100)
    # Its thresholds are those of the probes embedded by the new model.
    model = client.app.state.opengallery.models.get("random@small")  # type: ignore[attr-defined]
    from service.core.images import decode_image

    probes = model.embedder.embed_images(
        [decode_image(png_bytes(seed), max_bytes=10**7, max_pixels=10**7) for seed in range(100)]
    )
    enrolled = model.embedder.embed_images(
        [decode_image(png_bytes(1000), max_bytes=10**7, max_pixels=10**7)]
    )
    _, scores = SubjectScorer(enrolled, ["a"]).top1(probes)
    assert after["thresholds"][-1]["threshold"] == pytest.approx(
        threshold_for_fpir(scores, 0.1), abs=1e-6
    )
    refused = client.delete("/v1/galleries/g/calibration")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "calibration_required"
    assert "100" in refused.json()["error"]["message"]
    assert client.get("/v1/galleries/g/calibration").json()["gallery_set_size"] == 100


def test_a_set_of_embeddings_cannot_migrate(client: TestClient, tmp_path: Path) -> None:
    other = make_random_bundle(tmp_path / "other", seed=6, embedding_dim=DIM, version="9")
    assert client.post("/v1/models", json={"path": str(other.path)}).status_code == 201
    client.post("/v1/galleries", json={"name": "g"})
    upload(client, unit(np.random.default_rng(23), 3))
    response = client.post("/v1/galleries/g/migrate", json={"model": "random@9"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "cannot_migrate"
    assert "3 of the 3 probes of its calibration set" in response.json()["error"]["message"]


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_scores_true_gives_every_probes_best_score_descending(
    client: TestClient, bundle_path: Path, scoring: str
) -> None:
    rng = np.random.default_rng(30)
    made = client.post("/v1/galleries", json={"name": "g", "fpir": 0.1, "scoring": scoring})
    assert made.status_code == 201
    url = "/v1/galleries/g/calibration"
    # An empty gallery: no probe has a best subject, so there are no scores.
    assert client.get(url, params={"scores": "true"}).json()["scores"] == []
    gallery = unit(rng, 30)
    labels = [f"s{i % 12:03d}" for i in range(30)]  # several samples per subject
    for subject in sorted(set(labels)):
        client.put(f"/v1/galleries/g/subjects/{subject}")
        rows = [v.tolist() for v, label in zip(gallery, labels, strict=True) if label == subject]
        response = client.post(
            f"/v1/galleries/g/subjects/{subject}/samples", json={"embeddings": rows}
        )
        assert response.status_code == 201, response.text

    def reference(probes: np.ndarray) -> np.ndarray:
        # The brute-force rule: every probe's top-1 subject score, sorted descending.
        _, scores = SubjectScorer(gallery, labels, scoring).top1(l2_normalise(probes))
        return np.sort(scores)[::-1]

    # The bundle's set answers: 2000 scores.
    plain = client.get(url).json()
    assert "scores" not in plain
    assert "scores" not in client.get(url, params={"scores": "false"}).json()
    body = client.get(url, params={"scores": "true"}).json()
    assert {k: v for k, v in body.items() if k != "scores"} == plain
    bundle = load_bundle(bundle_path).load_calibration()
    np.testing.assert_allclose(body["scores"], reference(bundle), atol=1e-6)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    # The threshold for FPIR 0.1 accepts at most 10% of exactly these scores.
    threshold = next(p["threshold"] for p in body["thresholds"] if p["fpir"] == 0.1)
    assert sum(score >= threshold for score in body["scores"]) <= 200
    # The gallery's own set once it is in effect: its 120 probes.
    strangers = unit(rng, 120)
    upload(client, strangers)
    own = client.get(url, params={"scores": "true"}).json()
    assert (own["source"], len(own["scores"])) == ("gallery", 120)
    np.testing.assert_allclose(own["scores"], reference(strangers), atol=1e-6)
    refused = client.get(url, params={"scores": "maybe"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "validation_error"

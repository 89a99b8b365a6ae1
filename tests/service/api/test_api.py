"""The HTTP contract (design §4) through the in-process client."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle
from models.preprocessing import images_to_array
from models.testing import random_embeddings
from service.testing import png_bytes

from ..conftest import DIM, unit


def make_gallery(client: TestClient, name: str = "g", **fields: object) -> dict:
    response = client.post("/v1/galleries", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def enrol_embeddings(client: TestClient, gallery: str, subject: str, vectors: np.ndarray) -> list:
    assert client.put(f"/v1/galleries/{gallery}/subjects/{subject}").status_code in (200, 201)
    response = client.post(
        f"/v1/galleries/{gallery}/subjects/{subject}/samples",
        json={"embeddings": np.asarray(vectors).tolist()},
    )
    assert response.status_code == 201, response.text
    return response.json()["samples"]


def test_gallery_lifecycle(client: TestClient) -> None:
    created = make_gallery(client, "people", fpir=0.05, scoring="mean")
    assert created["model"] == "random@1"
    assert (created["fpir"], created["scoring"], created["subject_count"]) == (0.05, "mean", 0)
    duplicate = client.post("/v1/galleries", json={"name": "people"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "already_exists"
    make_gallery(client, "other")
    names = [g["name"] for g in client.get("/v1/galleries").json()["galleries"]]
    assert names == ["other", "people"]
    assert client.get("/v1/galleries/people").json()["fpir"] == 0.05
    assert client.delete("/v1/galleries/people").status_code == 204
    missing = client.get("/v1/galleries/people")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "not_found", "message": "gallery 'people' does not exist"}
    }
    assert client.delete("/v1/galleries/people").status_code == 404


def test_default_fpir_and_unknown_model(client: TestClient) -> None:
    assert make_gallery(client)["fpir"] == 0.01
    response = client.post("/v1/galleries", json={"name": "x", "model": "nope@9"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_model"


def test_subjects_create_update_list_delete(client: TestClient) -> None:
    make_gallery(client)
    first = client.put("/v1/galleries/g/subjects/José", json={"metadata": {"team": "a"}})
    assert first.status_code == 201
    assert first.json()["subject_id"] == "José"
    again = client.put("/v1/galleries/g/subjects/José", json={"metadata": {"team": "b"}})
    assert again.status_code == 200
    assert client.get("/v1/galleries/g/subjects/José").json()["metadata"] == {"team": "b"}
    # PUT without a body keeps the metadata.
    assert client.put("/v1/galleries/g/subjects/José").status_code == 200
    assert client.get("/v1/galleries/g/subjects/José").json()["metadata"] == {"team": "b"}
    names = ["José", "ana", "Zoë", "bob", "名前"]
    for name in names[1:]:
        assert client.put(f"/v1/galleries/g/subjects/{name}").status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/galleries/g/subjects", params=params).json()
        assert len(page["subjects"]) <= 2
        seen += [s["subject_id"] for s in page["subjects"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(names)  # every subject once, in id order, unchanged (José, 名前)
    assert client.delete("/v1/galleries/g/subjects/bob").status_code == 204
    assert client.get("/v1/galleries/g/subjects/bob").status_code == 404
    assert client.delete("/v1/galleries/g/subjects/bob").status_code == 404
    bad_cursor = client.get("/v1/galleries/g/subjects", params={"cursor": "%%%"})
    assert bad_cursor.status_code == 422


def test_identify_embeddings_scores_are_cosines(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    make_gallery(client)
    gallery = {f"s{i}": unit(rng, 3) for i in range(20)}
    for subject, vectors in gallery.items():
        samples = enrol_embeddings(client, "g", subject, vectors)
        assert [s["status"] for s in samples] == ["enrolled"] * 3
    probes = unit(rng, 4)
    probes[0] = gallery["s7"][1] * 0.99 + 0.01 * unit(rng, 1)[0]
    response = client.post(
        "/v1/galleries/g/identify", json={"embeddings": probes.tolist(), "top_k": 5}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "random@1"
    assert len(body["results"]) == 4
    normalised = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    for probe, result in zip(normalised, body["results"], strict=True):
        expected = sorted(
            ((float((v @ probe).max()), s) for s, v in gallery.items()), reverse=True
        )[:5]
        got = [(c["score"], c["subject_id"]) for c in result["candidates"]]
        assert [s for _, s in got] == [s for _, s in expected]
        np.testing.assert_allclose([v for v, _ in got], [v for v, _ in expected], atol=1e-5)
        assert len({s for _, s in got}) == 5  # one per subject
        assert result["score"] == got[0][0]
        assert result["fpir"] == 0.01
        assert result["decision"] == ("known" if got[0][0] >= result["threshold"] else "unknown")
        assert result["subject_id"] == (got[0][1] if result["decision"] == "known" else None)
    assert body["results"][0]["decision"] == "known"
    assert body["results"][0]["subject_id"] == "s7"


def test_mean_template_scoring(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    make_gallery(client, "m", scoring="mean")
    a, b = unit(rng, 2), unit(rng, 3)
    enrol_embeddings(client, "m", "a", a)
    enrol_embeddings(client, "m", "b", b)
    probe = unit(rng, 1)[0]
    result = client.post(
        "/v1/galleries/m/identify", json={"embeddings": [probe.tolist()], "top_k": 2}
    ).json()["results"][0]
    expected = {}
    for name, vectors in (("a", a), ("b", b)):
        template = vectors.mean(axis=0)
        expected[name] = float(probe @ template / np.linalg.norm(template))
    got = {c["subject_id"]: c["score"] for c in result["candidates"]}
    assert got == pytest.approx(expected, abs=1e-5)
    # Deleting a sample updates the template.
    sample_ids = [
        s["sample_id"] for s in client.get("/v1/galleries/m/subjects/b").json()["samples"]
    ]
    assert client.delete(f"/v1/galleries/m/subjects/b/samples/{sample_ids[0]}").status_code == 204
    template = b[1:].mean(axis=0)
    result = client.post(
        "/v1/galleries/m/identify", json={"embeddings": [probe.tolist()], "top_k": 2}
    ).json()["results"][0]
    got = {c["subject_id"]: c["score"] for c in result["candidates"]}
    assert got["b"] == pytest.approx(float(probe @ template / np.linalg.norm(template)), abs=1e-5)


def test_image_enrolment_and_probe_match_an_independent_embedding(
    client: TestClient, bundle_path
) -> None:
    make_gallery(client)
    client.put("/v1/galleries/g/subjects/a")
    images = [png_bytes(seed) for seed in range(3)]
    response = client.post(
        "/v1/galleries/g/subjects/a/samples",
        files=[("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[:2])],
    )
    assert response.status_code == 201, response.text
    assert [s["status"] for s in response.json()["samples"]] == ["enrolled", "enrolled"]
    as_json = client.post(
        "/v1/galleries/g/subjects/a/samples",
        json={"images": [base64.b64encode(images[2]).decode()]},
    )
    assert as_json.status_code == 201
    # The same bytes again: acknowledged as the existing sample, not enrolled twice.
    again = client.post(
        "/v1/galleries/g/subjects/a/samples",
        json={"images": [base64.b64encode(images[2]).decode()]},
    ).json()["samples"][0]
    assert again["duplicate"] is True
    assert again["sample_id"] == as_json.json()["samples"][0]["sample_id"]
    detail = client.get("/v1/galleries/g/subjects/a").json()
    assert detail["sample_count"] == 3
    assert {s["model"] for s in detail["samples"]} == {"random@1"}
    assert all(s["has_image"] and s["source"] == "image" for s in detail["samples"])
    # A probe image: its score is the cosine of the numpy reference network's embeddings.
    from io import BytesIO

    from PIL import Image

    spec = load_bundle(bundle_path).manifest.input
    arrays = images_to_array([Image.open(BytesIO(data)) for data in images], spec)
    reference = random_embeddings(arrays, seed=0, embedding_dim=DIM)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    probe = png_bytes(99)
    probe_vector = random_embeddings(
        images_to_array([Image.open(BytesIO(probe))], spec), seed=0, embedding_dim=DIM
    )[0]
    probe_vector /= np.linalg.norm(probe_vector)
    result = client.post(
        "/v1/galleries/g/identify", files=[("images", ("p.png", probe, "image/png"))]
    ).json()["results"][0]
    assert result["score"] == pytest.approx(float((reference @ probe_vector).max()), abs=1e-4)
    # An enrolled image as a probe scores 1.
    exact = client.post(
        "/v1/galleries/g/identify",
        files=[("images", ("p.png", images[1], "image/png"))],
        data={"top_k": "1"},
    ).json()["results"][0]
    assert exact["score"] == pytest.approx(1.0, abs=1e-5)
    assert exact["decision"] == "known" and exact["subject_id"] == "a"


def test_explicit_threshold_and_verify(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    make_gallery(client)
    vectors = unit(rng, 2)
    enrol_embeddings(client, "g", "a", vectors)
    enrol_embeddings(client, "g", "b", unit(rng, 2))
    probe = vectors[0] * 0.8 + 0.2 * unit(rng, 1)[0]
    probe /= np.linalg.norm(probe)
    score = float((vectors @ probe).max())
    for threshold, decision in ((score - 1e-3, "known"), (score + 1e-3, "unknown")):
        result = client.post(
            "/v1/galleries/g/identify",
            json={"embeddings": [probe.tolist()], "threshold": threshold},
        ).json()["results"][0]
        assert result["decision"] == decision
        assert result["threshold"] == threshold
        assert 0.0 <= result["fpir"] <= 1.0
    both = client.post(
        "/v1/galleries/g/identify",
        json={"embeddings": [probe.tolist()], "threshold": 0.5, "fpir": 0.1},
    )
    assert both.status_code == 422
    verified = client.post(
        "/v1/galleries/g/verify", json={"subject_id": "a", "embedding": probe.tolist()}
    )
    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert body["score"] == pytest.approx(score, abs=1e-5)
    assert body["match"] == (score >= body["threshold"])
    assert body["model"] == "random@1"
    low = client.post(
        "/v1/galleries/g/verify",
        json={"subject_id": "a", "embedding": probe.tolist(), "threshold": score + 1e-3},
    ).json()
    assert low["match"] is False
    missing = client.post(
        "/v1/galleries/g/verify", json={"subject_id": "zz", "embedding": probe.tolist()}
    )
    assert missing.status_code == 404


def test_empty_gallery_answers_unknown(client: TestClient) -> None:
    make_gallery(client)
    result = client.post(
        "/v1/galleries/g/identify", json={"embeddings": [[1.0] + [0.0] * (DIM - 1)]}
    ).json()["results"][0]
    assert result == {
        "decision": "unknown",
        "subject_id": None,
        "score": None,
        "threshold": None,
        "fpir": 0.01,
        "fpir_upper": 0.0,  # an empty gallery accepts nothing
        "candidates": [],
    }


def test_delete_subject_removes_it_from_identify(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    make_gallery(client)
    a = unit(rng, 1)
    enrol_embeddings(client, "g", "a", a)
    enrol_embeddings(client, "g", "b", unit(rng, 1))
    before = client.post("/v1/galleries/g/identify", json={"embeddings": a.tolist()}).json()
    assert before["results"][0]["candidates"][0]["subject_id"] == "a"
    assert client.delete("/v1/galleries/g/subjects/a").status_code == 204
    after = client.post("/v1/galleries/g/identify", json={"embeddings": a.tolist()}).json()
    assert [c["subject_id"] for c in after["results"][0]["candidates"]] == ["b"]
    assert client.get("/v1/galleries/g").json()["sample_count"] == 1


def test_auth_scopes(client: TestClient) -> None:
    make_gallery(client)
    created = client.post("/v1/keys", json={"scope": "client", "name": "app"})
    assert created.status_code == 201
    client_key = created.json()["key"]
    assert created.json()["scope"] == "client"
    no_key = client.get("/v1/galleries", headers={"X-API-Key": ""})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/galleries", headers={"X-API-Key": "og_wrong"}).status_code == 401
    as_client = {"X-API-Key": client_key}
    assert client.get("/v1/galleries", headers=as_client).status_code == 200
    assert client.put("/v1/galleries/g/subjects/a", headers=as_client).status_code == 201
    forbidden = client.post("/v1/galleries", json={"name": "h"}, headers=as_client)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert client.delete("/v1/galleries/g", headers=as_client).status_code == 403
    assert client.post("/v1/keys", json={"scope": "admin"}, headers=as_client).status_code == 403
    # No key needed for liveness, readiness, metrics and the API documentation.
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path, headers={"X-API-Key": ""}).status_code == 200


def test_a_route_checks_the_key_it_reads_when_the_gate_read_another(client: TestClient) -> None:
    """Two X-API-Key headers: the middleware's gate reads the last, the routes the first. The
    route reuses the gate's record only for the same key, so the first key's scope decides."""
    client_key = client.post("/v1/keys", json={"scope": "client"}).json()["key"]
    admin_key = client.headers.pop("X-API-Key")
    client_then_admin = [("X-API-Key", client_key), ("X-API-Key", admin_key)]
    refused = client.post("/v1/galleries", json={"name": "h"}, headers=client_then_admin)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    admin_then_client = [("X-API-Key", admin_key), ("X-API-Key", client_key)]
    assert (
        client.post("/v1/galleries", json={"name": "h"}, headers=admin_then_client).status_code
        == 201
    )
    wrong_then_admin = [("X-API-Key", "og_wrong"), ("X-API-Key", admin_key)]
    assert client.get("/v1/galleries", headers=wrong_then_admin).status_code == 401

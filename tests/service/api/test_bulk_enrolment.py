"""POST /v1/galleries/{g}/samples: many subjects' samples in one request and one transaction."""

from __future__ import annotations

import base64
import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.testing import png_bytes

from ..conftest import ADMIN_KEY, DIM

URL = "/v1/galleries/g/samples"


def unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(DIM)
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.fixture
def gallery(client: TestClient) -> TestClient:
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    return client


def test_good_and_bad_items_get_outcomes_in_order_and_the_good_are_searchable(
    gallery: TestClient,
) -> None:
    image = base64.b64encode(png_bytes(3)).decode("ascii")
    items = [
        {"subject_id": "ann", "embedding": unit(1)},
        {"subject_id": "bob", "embedding": [1.0] * (DIM + 1)},  # wrong dimension
        {"subject_id": "bob", "embedding": unit(2)},
        {"subject_id": "a/b", "embedding": unit(3)},  # an id the API refuses
        {"subject_id": "cy", "image": image},
        {"subject_id": "cy", "image": base64.b64encode(b"not an image").decode("ascii")},
        {"subject_id": "ann", "embedding": unit(1)},  # ann's first item again
    ]
    response = gallery.post(URL, json={"items": items, "create_subjects": True})
    assert response.status_code == 201, response.text
    samples = response.json()["samples"]
    assert [s["subject_id"] for s in samples] == [item["subject_id"] for item in items]
    assert [s["status"] for s in samples] == [
        "enrolled",
        "rejected",
        "enrolled",
        "rejected",
        "enrolled",
        "rejected",
        "enrolled",
    ]
    assert [s["code"] for s in samples if s["status"] == "rejected"] == [
        "invalid_embedding",
        "invalid_id",
        "invalid_image",
    ]
    assert "dimension" in samples[1]["reason"]
    assert samples[6]["duplicate"] and samples[6]["sample_id"] == samples[0]["sample_id"]
    assert not samples[0]["duplicate"]
    # Committed and indexed: each embedding finds its own subject.
    for subject, seed in (("ann", 1), ("bob", 2)):
        result = gallery.post(
            "/v1/galleries/g/identify", json={"embeddings": [unit(seed)], "threshold": 0.99}
        ).json()["results"][0]
        assert result["subject_id"] == subject
    details = gallery.get("/v1/galleries/g").json()
    assert (details["subject_count"], details["sample_count"]) == (3, 3)


def test_unknown_subjects_need_create_subjects(gallery: TestClient) -> None:
    gallery.put("/v1/galleries/g/subjects/known")
    items = [
        {"subject_id": "known", "embedding": unit(1)},
        {"subject_id": "stranger", "embedding": unit(2)},
    ]
    samples = gallery.post(URL, json={"items": items}).json()["samples"]
    assert [s["status"] for s in samples] == ["enrolled", "rejected"]
    assert samples[1]["code"] == "subject_not_found" and "create_subjects" in samples[1]["reason"]
    assert gallery.get("/v1/galleries/g/subjects/stranger").status_code == 404
    only_strangers = gallery.post(URL, json={"items": items[1:]})
    assert only_strangers.status_code == 404
    assert only_strangers.json()["error"]["code"] == "subject_not_found"


def test_every_item_rejected_is_a_422_listing_them(gallery: TestClient) -> None:
    junk = base64.b64encode(b"junk").decode("ascii")
    nan = ", ".join(["NaN"] * DIM)  # what a careless client's JSON encoder writes
    body = (
        f'{{"items": [{{"subject_id": "a", "embedding": [{nan}]}},'
        f' {{"subject_id": "b", "image": "{junk}"}}], "create_subjects": true}}'
    )
    response = gallery.post(URL, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "all_samples_rejected"
    assert [s["code"] for s in error["details"]["samples"]] == [
        "invalid_embedding",
        "invalid_image",
    ]
    assert gallery.get("/v1/galleries/g").json()["subject_count"] == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"items": []}, 422, "no_input"),
        ({"items": [{"subject_id": "a"}]}, 422, "validation_error"),
        (
            {"items": [{"subject_id": "a", "embedding": [0.0] * DIM, "image": "AA=="}]},
            422,
            "validation_error",
        ),
        ({"items": [{"subject_id": "a", "embedding": "x"}]}, 422, "validation_error"),
        ({"items": "nope"}, 422, "validation_error"),
    ],
)
def test_malformed_requests_are_refused_whole(
    gallery: TestClient, body: dict, status: int, code: str
) -> None:
    response = gallery.post(URL, json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert gallery.get("/v1/galleries/g").json()["sample_count"] == 0


def test_more_items_than_the_limit_is_a_413_naming_it(tmp_path: Path, bundle_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, max_bulk_items=3
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        client.post("/v1/galleries", json={"name": "g"})
        items = [{"subject_id": f"s{i}", "embedding": unit(i)} for i in range(4)]
        response = client.post(URL, json={"items": items, "create_subjects": True})
        assert response.status_code == 413
        assert "the limit is 3" in response.json()["error"]["message"]
        ok = client.post(URL, json={"items": items[:3], "create_subjects": True})
        assert ok.status_code == 201


def test_unknown_gallery_and_missing_key(client: TestClient) -> None:
    body = {"items": [{"subject_id": "a", "embedding": unit(0)}]}
    assert client.post("/v1/galleries/none/samples", json=body).status_code == 404
    response = client.post(URL, json=body, headers={"X-API-Key": ""})
    assert response.status_code == 401


@pytest.fixture
def client_key(client: TestClient) -> Iterator[str]:
    yield client.post("/v1/keys", json={"scope": "client"}).json()["key"]


def test_a_client_key_may_enrol_in_bulk(gallery: TestClient, client_key: str) -> None:
    body = {"items": [{"subject_id": "a", "embedding": unit(0)}], "create_subjects": True}
    response = gallery.post(URL, json=body, headers={"X-API-Key": client_key})
    assert response.status_code == 201


def test_the_garbage_collector_is_paused_for_the_request_and_on_after(
    gallery: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    galleries = gallery.app.state.opengallery.galleries  # type: ignore[attr-defined]
    enrol_many = galleries.enrol_many
    seen: list[bool] = []

    def watching(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return enrol_many(*args, **kwargs)

    monkeypatch.setattr(galleries, "enrol_many", watching)
    gc.enable()
    body = {"items": [{"subject_id": "a", "embedding": unit(0)}], "create_subjects": True}
    assert gallery.post(URL, json=body).status_code == 201
    assert seen == [False] and gc.isenabled()
    refused = {"items": [{"subject_id": "a", "embedding": [0.0] * DIM}]}  # every item rejected
    assert gallery.post(URL, json=refused).status_code == 422
    assert gallery.post(URL, json={"items": "nope"}).status_code == 422
    assert seen == [False, False] and gc.isenabled()

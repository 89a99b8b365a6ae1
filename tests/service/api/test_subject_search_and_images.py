"""What the console reads beyond the core API: subjects by id prefix, and a sample's image."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.testing import png_bytes


def make_gallery(client: TestClient, name: str = "g", **fields: object) -> None:
    response = client.post("/v1/galleries", json={"name": name, **fields})
    assert response.status_code == 201, response.text


def test_list_subjects_by_prefix_pages_within_the_prefix(client: TestClient) -> None:
    make_gallery(client)
    ids = ["ana", "anabel", "Ana", "andré", "bob", "an%", "an_x", "名前", "名"]
    for subject_id in ids:
        assert client.put(f"/v1/galleries/g/subjects/{subject_id}").status_code == 201

    def listed(prefix: str, limit: int = 100) -> list[str]:
        found, cursor = [], None
        while True:
            params: dict[str, str | int] = {"prefix": prefix, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            response = client.get("/v1/galleries/g/subjects", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            found += [s["subject_id"] for s in body["subjects"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return found

    for prefix in ["an", "an%", "an_", "A", "名", "z", ""]:
        expected = sorted(i for i in ids if i.startswith(prefix))
        assert listed(prefix) == expected, prefix
        assert listed(prefix, limit=1) == expected, prefix
    too_long = client.get("/v1/galleries/g/subjects", params={"prefix": "x" * 257})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "validation_error"


def test_sample_image_returns_the_enrolled_bytes(client: TestClient) -> None:
    make_gallery(client, keep_images=True)
    make_gallery(client, "plain", keep_images=False)
    image = png_bytes(3)
    client.put("/v1/galleries/g/subjects/José")
    enrolled = client.post(
        "/v1/galleries/g/subjects/José/samples",
        files=[("images", ("a.png", image, "image/png"))],
    )
    assert enrolled.status_code == 201, enrolled.text
    sample_id = enrolled.json()["samples"][0]["sample_id"]
    response = client.get(f"/v1/galleries/g/subjects/José/samples/{sample_id}/image")
    assert response.status_code == 200
    assert response.content == image
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"

    vector = np.ones(16) / 4.0
    by_embedding = client.post(
        "/v1/galleries/g/subjects/José/samples", json={"embeddings": [vector.tolist()]}
    ).json()["samples"][0]["sample_id"]
    missing = client.get(f"/v1/galleries/g/subjects/José/samples/{by_embedding}/image")
    assert missing.status_code == 404
    assert "no kept image" in missing.json()["error"]["message"]

    client.put("/v1/galleries/plain/subjects/a")
    encoded = base64.b64encode(image).decode()
    kept_none = client.post("/v1/galleries/plain/subjects/a/samples", json={"images": [encoded]})
    plain_id = kept_none.json()["samples"][0]["sample_id"]
    assert client.get(f"/v1/galleries/plain/subjects/a/samples/{plain_id}/image").status_code == 404
    for url in [
        f"/v1/galleries/g/subjects/nobody/samples/{sample_id}/image",
        f"/v1/galleries/plain/subjects/a/samples/{sample_id}/image",
        "/v1/galleries/g/subjects/José/samples/999999/image",
    ]:
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert answer.json()["error"]["code"] == "not_found"
    assert client.get("/v1/galleries/g/subjects/José/samples/0/image").status_code == 422


def test_sample_image_media_types(client: TestClient) -> None:
    import io

    make_gallery(client, keep_images=True)
    client.put("/v1/galleries/g/subjects/a")
    buffer = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 251).save(
        buffer, format="JPEG"
    )
    response = client.post(
        "/v1/galleries/g/subjects/a/samples", files=[("images", ("a.jpg", buffer.getvalue()))]
    )
    sample_id = response.json()["samples"][0]["sample_id"]
    image = client.get(f"/v1/galleries/g/subjects/a/samples/{sample_id}/image")
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == buffer.getvalue()


def test_a_client_key_may_read_images_without_a_key_may_not(client: TestClient) -> None:
    make_gallery(client, keep_images=True)
    client.put("/v1/galleries/g/subjects/a")
    response = client.post(
        "/v1/galleries/g/subjects/a/samples", files=[("images", ("a.png", png_bytes(1)))]
    )
    url = f"/v1/galleries/g/subjects/a/samples/{response.json()['samples'][0]['sample_id']}/image"
    key = client.post("/v1/keys", json={"scope": "client"}).json()["key"]
    assert client.get(url, headers={"X-API-Key": key}).status_code == 200
    assert client.get(url, headers={"X-API-Key": ""}).status_code == 401


def test_models_list_their_manifest_metrics(client: TestClient) -> None:
    import json
    from pathlib import Path

    from models.bundle import load_bundle

    default = Path(__file__).resolve().parents[3] / "models" / "default"
    listed = client.get("/v1/models").json()["models"]
    assert [m["metrics"] for m in listed] == [{}]  # the random test bundle has none
    registered = client.post("/v1/models", json={"path": str(default)})
    assert registered.status_code == 201, registered.text
    by_id = {m["model"]: m for m in client.get("/v1/models").json()["models"]}
    expected = json.loads((default / "manifest.json").read_text())["metrics"]
    assert by_id[load_bundle(default).manifest.model_id]["metrics"] == expected

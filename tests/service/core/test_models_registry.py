"""The model registry: GET/POST /v1/models, verification, duplicates, survival of a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle, write_bundle
from models.testing import make_random_bundle
from service.api.app import create_app
from service.settings import Settings

from ..conftest import ADMIN_KEY
from ..redeploy import enrol_images, enrolled_images, expected_top, identify_images


@pytest.fixture(scope="module")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("second") / "random-2"
    make_random_bundle(path, seed=1, embedding_dim=24, version="2")
    return path


def models_listed(client: TestClient) -> dict[str, dict]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return {model["model"]: model for model in response.json()["models"]}


def registered_dirs(settings: Settings) -> list[str]:
    return sorted(p.name for p in (settings.data_dir / "models").iterdir())


def test_register_list_and_galleries_per_model(client: TestClient, second_bundle: Path) -> None:
    assert list(models_listed(client)) == ["random@1"]
    response = client.post("/v1/models", json={"path": str(second_bundle)})
    assert response.status_code == 201, response.text
    assert response.json() == {"model": "random@2"}
    assert client.post("/v1/galleries", json={"name": "old"}).status_code == 201
    assert (
        client.post("/v1/galleries", json={"name": "new", "model": "random@2"}).status_code == 201
    )
    listed = models_listed(client)
    assert listed["random@1"]["galleries"] == ["old"] and listed["random@1"]["default"] is True
    assert listed["random@2"]["galleries"] == ["new"] and listed["random@2"]["default"] is False
    assert listed["random@2"]["embedding_dim"] == 24
    # The new gallery embeds with the new network: its answer matches the numpy reference.
    images = enrolled_images(3, 2)
    enrol_images(client, "new", images)
    probes = [images["s1"][0], images["s2"][1]]
    body = identify_images(client, "new", probes).json()
    assert body["model"] == "random@2"
    top, _ = expected_top(load_bundle(second_bundle), images, probes)
    assert [r["candidates"][0]["subject_id"] for r in body["results"]] == top == ["s1", "s2"]


def test_duplicates_are_409(client: TestClient, second_bundle: Path, bundle_path: Path) -> None:
    assert client.post("/v1/models", json={"path": str(second_bundle)}).status_code == 201
    again = client.post("/v1/models", json={"path": str(second_bundle)})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    assert again.json()["error"]["details"] == {"model": "random@2", "same_file": True}
    default = client.post("/v1/models", json={"path": str(bundle_path)})
    assert default.status_code == 409, default.text
    assert "random@1" in default.json()["error"]["message"]


def corrupt_variants(source: Path, root: Path) -> dict[str, Path]:
    """Bundles broken in different ways (each a copy of a valid one)."""
    variants: dict[str, Path] = {}

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(source, target)
        variants[name] = target
        return target

    onnx = copy("tampered-onnx") / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    (copy("no-calibration") / "calibration.npz").unlink()
    (copy("bad-json") / "manifest.json").write_text("{not json", encoding="utf-8")
    manifest_path = copy("bad-schema") / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["embedding_dim"] = "sixteen"
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    variants["missing"] = root / "does-not-exist"
    # Checksum and schema fine, but the ONNX file is no model onnxruntime can load.
    template = load_bundle(source)
    variants["not-onnx"] = write_bundle(
        root / "not-onnx",
        template.manifest.__class__.from_dict(
            {**template.manifest.to_dict(), "version": "garbage", "onnx_sha256": "0" * 64}
        ),
        b"this is not an ONNX graph",
        template.load_calibration(),
    ).path
    return variants


def test_corrupt_bundles_are_refused_and_the_old_model_keeps_serving(
    client: TestClient, settings: Settings, second_bundle: Path, tmp_path: Path
) -> None:
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    images = enrolled_images(4, 2)
    enrol_images(client, "g", images)
    probes = [images["s0"][1], images["s3"][0]]
    before = identify_images(client, "g", probes).json()
    listed_before = models_listed(client)
    dirs_before = registered_dirs(settings)
    for name, path in corrupt_variants(second_bundle, tmp_path / "broken").items():
        response = client.post("/v1/models", json={"path": str(path)})
        assert response.status_code == 422, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_bundle" and error["message"], name
        # Nothing changed: same models, no copy left behind, same answers from the old model.
        assert models_listed(client) == listed_before, name
        assert registered_dirs(settings) == dirs_before, name
        assert identify_images(client, "g", probes).json() == before, name
    assert [r["subject_id"] for r in before["results"]] == ["s0", "s3"]
    relative = client.post("/v1/models", json={"path": "relative/bundle"})
    assert relative.status_code == 422 and "absolute" in relative.json()["error"]["message"]
    assert client.post("/v1/models", json={}).status_code == 422


def test_registering_needs_an_admin_key(client: TestClient, second_bundle: Path) -> None:
    key = client.post("/v1/keys", json={"scope": "client"}).json()["key"]
    response = client.post(
        "/v1/models", json={"path": str(second_bundle)}, headers={"X-API-Key": key}
    )
    assert response.status_code == 403
    assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
    assert "random@2" not in models_listed(client)


def test_registered_bundles_survive_a_restart_and_the_source_removal(
    settings: Settings, second_bundle: Path, tmp_path: Path
) -> None:
    source = tmp_path / "to-be-removed"
    shutil.copytree(second_bundle, source)
    images = enrolled_images(3, 2)
    with TestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/v1/models", json={"path": str(source)}).status_code == 201
        client.post("/v1/galleries", json={"name": "g", "model": "random@2"})
        enrol_images(client, "g", images)
        before = identify_images(client, "g", images["s2"]).json()
    shutil.rmtree(source)
    with TestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        listed = models_listed(client)
        assert set(listed) == {"random@1", "random@2"}
        assert listed["random@2"]["galleries"] == ["g"]
        after = identify_images(client, "g", images["s2"]).json()
    assert after == before and after["model"] == "random@2"

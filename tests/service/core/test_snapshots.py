"""Index snapshots (`faiss://?storage=sq8`): a start loads the snapshot saved at the database's
gallery version instead of reading every embedding, and ignores (and rebuilds) a stale one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.storage import NewSample, open_store
from service.storage.sqlite.samples import SQLiteSamples

from ..conftest import ADMIN_KEY, DIM

SQ8 = "faiss://?storage=sq8"


def unit_rows(seed: int, count: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The galleries whose embeddings were read from the database."""
    calls: list[str] = []
    original = SQLiteSamples.load_embeddings

    def counting(self: SQLiteSamples, gallery: str, model_id: str):  # type: ignore[no-untyped-def]
        calls.append(gallery)
        return original(self, gallery, model_id)

    monkeypatch.setattr(SQLiteSamples, "load_embeddings", counting)
    return calls


def serve(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.headers["X-API-Key"] = ADMIN_KEY
    return client


def top_subjects(client: TestClient, probes: np.ndarray) -> list[list[tuple[str, float]]]:
    response = client.post(
        "/v1/galleries/g/identify", json={"embeddings": probes.tolist(), "top_k": 3}
    )
    assert response.status_code == 200, response.text
    return [
        [(c["subject_id"], c["score"]) for c in result["candidates"]]
        for result in response.json()["results"]
    ]


def test_a_good_snapshot_is_used_and_a_stale_one_rebuilt(
    tmp_path: Path, bundle_path: Path, loads: list[str]
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, index_url=SQ8
    )
    vectors = unit_rows(0, 40)
    probes = unit_rows(1, 5)
    with serve(settings) as client:
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        for s in range(20):
            assert client.put(f"/v1/galleries/g/subjects/p{s}").status_code == 201
            body = {"embeddings": vectors[2 * s : 2 * s + 2].tolist()}
            response = client.post(f"/v1/galleries/g/subjects/p{s}/samples", json=body)
            assert response.status_code == 201, response.text
        before = top_subjects(client, probes)
    # Stopped: the snapshot was saved at the gallery's version. A restart uses it.
    loads.clear()
    with serve(settings) as client:
        assert top_subjects(client, probes) == before
        assert loads == []
        # A write after the start: at shutdown the snapshot is saved again, at the new version.
        body = {"embeddings": probes[:1].tolist()}
        assert client.put("/v1/galleries/g/subjects/new").status_code == 201
        assert client.post("/v1/galleries/g/subjects/new/samples", json=body).status_code == 201
        after_write = top_subjects(client, probes)
    assert after_write[0][0] == ("new", pytest.approx(1.0, abs=1e-6))
    with serve(settings) as client:
        assert top_subjects(client, probes) == after_write
        assert loads == []
    # The database moves on without the service (an import): the snapshot is stale.
    store = open_store(settings.effective_database_url)
    try:
        model_id = store.get_gallery("g").model_id  # type: ignore[union-attr]
        digest = hashlib.sha256(probes[1].tobytes()).hexdigest()
        store.bulk_enrol("g", model_id, [("imported", NewSample(digest, "embedding", probes[1]))])
    finally:
        store.close()
    with serve(settings) as client:
        rebuilt = top_subjects(client, probes)
        assert loads == ["g"]
    assert rebuilt[1][0] == ("imported", pytest.approx(1.0, abs=1e-6))
    assert rebuilt[0] == after_write[0]
    # One snapshot and its row file remain; nothing else was left behind.
    names = sorted(path.suffix for path in (settings.data_dir / "index").iterdir())
    assert names == [".f32", ".json", ".npz"]  # the flat codes sit in the .npz


def test_a_deleted_gallerys_snapshot_goes_at_the_next_start(
    tmp_path: Path, bundle_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, index_url=SQ8
    )
    with serve(settings) as client:
        for gallery in ("kept", "deleted"):
            assert client.post("/v1/galleries", json={"name": gallery}).status_code == 201
            assert client.put(f"/v1/galleries/{gallery}/subjects/a").status_code == 201
            body = {"embeddings": unit_rows(2, 1).tolist()}
            response = client.post(f"/v1/galleries/{gallery}/subjects/a/samples", json=body)
            assert response.status_code == 201
    index_dir = settings.data_dir / "index"
    assert len(list(index_dir.glob("snapshot-*.json"))) == 2
    with serve(settings) as client:
        assert client.delete("/v1/galleries/deleted").status_code == 204
    with serve(settings):
        pass
    assert len(list(index_dir.glob("snapshot-*.json"))) == 1
    assert len(list(index_dir.glob("rows-*.f32"))) == 1

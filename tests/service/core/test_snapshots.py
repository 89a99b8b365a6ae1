"""Index snapshots (`faiss://?storage=sq8`): a start loads the snapshot saved at the database's
gallery version instead of reading every embedding, and ignores (and rebuilds) a stale one. The
calibration's kept scores travel with it: a start that loads the snapshot, for the calibration
set in effect, answers as a cold start without searching the calibration probes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.core.calibration import GalleryCalibration, KeptScores
from service.index.faiss import FaissSubjectIndex
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


@pytest.fixture
def calibration_searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of probes of each full calibration search (every probe against the
    gallery, as a start without saved scores does)."""
    calls: list[int] = []
    original = GalleryCalibration._search_all

    def counting(self: GalleryCalibration, probes: np.ndarray, source: str) -> KeptScores:
        calls.append(len(probes))
        return original(self, probes, source)

    monkeypatch.setattr(GalleryCalibration, "_search_all", counting)
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


def answers(
    client: TestClient, probes: np.ndarray, fpirs: tuple[float, ...] = (0.01, 0.1, 0.5)
) -> tuple[dict, list[dict]]:
    """The calibration (thresholds, fpir_upper, every kept score) and the identify results
    (decisions, thresholds, candidates) at several FPIRs."""
    response = client.get("/v1/galleries/g/calibration", params={"scores": "true"})
    assert response.status_code == 200, response.text
    results = []
    for fpir in fpirs:
        body = {"embeddings": probes.tolist(), "top_k": 3, "fpir": fpir}
        identified = client.post("/v1/galleries/g/identify", json=body)
        assert identified.status_code == 200, identified.text
        results += identified.json()["results"]
    return response.json(), results


def cold_start(
    settings: Settings, probes: np.ndarray, fpirs: tuple[float, ...] = (0.01, 0.1, 0.5)
) -> tuple[dict, list[dict]]:
    """The answers of a start without snapshots: the index built from the database, every
    calibration probe searched."""
    shutil.rmtree(settings.data_dir / "index")
    with serve(settings) as client:
        return answers(client, probes, fpirs)


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_a_restart_takes_the_saved_calibration_instead_of_searching(
    tmp_path: Path,
    bundle_path: Path,
    loads: list[str],
    calibration_searches: list[int],
    scoring: str,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, index_url=SQ8
    )
    vectors = unit_rows(0, 60)
    probes = np.vstack([vectors[10:20], unit_rows(1, 20)])  # enrolled ones and strangers
    with serve(settings) as client:
        body = {"name": "g", "fpir": 0.01, "scoring": scoring}
        assert client.post("/v1/galleries", json=body).status_code == 201
        for s in range(30):
            assert client.put(f"/v1/galleries/g/subjects/p{s}").status_code == 201
            body = {"embeddings": vectors[2 * s : 2 * s + 2].tolist()}
            response = client.post(f"/v1/galleries/g/subjects/p{s}/samples", json=body)
            assert response.status_code == 201, response.text
        # A deletion kept incrementally: the saved scores are those of the state at the stop.
        assert client.delete("/v1/galleries/g/subjects/p0").status_code == 204
    loads.clear()
    calibration_searches.clear()
    with serve(settings) as client:
        restarted = answers(client, probes)
    assert loads == [] and calibration_searches == []  # neither embeddings nor probes searched
    calibration, results = restarted
    assert calibration["source"] == "bundle" and calibration["size"] == 2000
    assert [point["fpir"] for point in calibration["thresholds"]] == [0.01, 0.1]  # 10 / fpir
    assert {r["decision"] for r in results} == {"known", "unknown"}
    assert cold_start(settings, probes) == restarted
    assert loads == ["g"] and calibration_searches == [2000]


OWN_FPIRS = (0.1, 0.5)  # what 120 probes support (10 / fpir)


def test_the_saved_calibration_follows_the_gallerys_own_set(
    tmp_path: Path, bundle_path: Path, calibration_searches: list[int]
) -> None:
    """Probes added to the gallery's own set while serving are in the saved scores; probes
    added without the service (a new version) are searched with the rebuilt index."""
    settings = Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, index_url=SQ8
    )
    vectors = unit_rows(0, 40)
    own = unit_rows(3, 150)
    probes = np.vstack([vectors[:10], unit_rows(1, 10)])
    with serve(settings) as client:
        assert client.post("/v1/galleries", json={"name": "g", "fpir": 0.1}).status_code == 201
        for s in range(20):
            assert client.put(f"/v1/galleries/g/subjects/p{s}").status_code == 201
            body = {"embeddings": vectors[2 * s : 2 * s + 2].tolist()}
            response = client.post(f"/v1/galleries/g/subjects/p{s}/samples", json=body)
            assert response.status_code == 201, response.text
        for part in (own[:50], own[50:100], own[100:120]):  # it takes over at 100, then grows
            body = {"embeddings": part.tolist()}
            response = client.post("/v1/galleries/g/calibration/samples", json=body)
            assert response.status_code == 201, response.text
    calibration_searches.clear()
    with serve(settings) as client:
        restarted = answers(client, probes, OWN_FPIRS)
    assert calibration_searches == []
    assert (restarted[0]["source"], restarted[0]["size"]) == ("gallery", 120)
    assert cold_start(settings, probes, OWN_FPIRS) == restarted
    # More of the own set, committed without the service: the version moved on.
    store = open_store(settings.effective_database_url)
    try:
        model_id = store.get_gallery("g").model_id  # type: ignore[union-attr]
        added = [
            NewSample(hashlib.sha256(row.tobytes()).hexdigest(), "embedding", row)
            for row in own[120:]
        ]
        store.add_calibration_samples("g", model_id, added)
    finally:
        store.close()
    calibration_searches.clear()
    with serve(settings) as client:
        grown = answers(client, probes, OWN_FPIRS)
    assert calibration_searches == [150]
    assert (grown[0]["source"], grown[0]["size"]) == ("gallery", 150)
    assert grown[0]["scores"] != restarted[0]["scores"]
    assert cold_start(settings, probes, OWN_FPIRS) == grown


def test_saved_scores_are_used_only_for_the_probes_they_were_saved_for(
    calibration_searches: list[int],
) -> None:
    """The same index version with another calibration set (other probes, or the same probes
    under another source) searches again, and equals a calibration from scratch."""
    index = FaissSubjectIndex(DIM, "max")
    vectors = unit_rows(4, 12)
    pks = np.arange(12) % 5 + 1
    index.add_many(pks, [f"sübject {pk} " for pk in pks], np.arange(1, 13), vectors)
    probes, others = unit_rows(5, 300), unit_rows(6, 300)
    saved = GalleryCalibration(index, probes, "bundle").saved()
    for set_probes, source, searched in [
        (probes, "bundle", []),
        (others, "bundle", [300]),
        (probes[:-1], "bundle", [299]),
        (probes, "gallery", [300]),
    ]:
        calibration_searches.clear()
        restored = GalleryCalibration(index, set_probes, source, saved=saved)
        assert calibration_searches == searched
        fresh = GalleryCalibration(index, set_probes, source)
        assert restored.source == source
        np.testing.assert_array_equal(restored.kept.scores, fresh.kept.scores)
        assert restored.kept.subjects.tolist() == fresh.kept.subjects.tolist()
        assert restored.for_fpir(0.1) == fresh.for_fpir(0.1)

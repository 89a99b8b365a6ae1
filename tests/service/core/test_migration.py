"""Gallery migrations: atomic switch under traffic, enrolments during the job, refusals,
failure, and a clean stop that resumes at the next start."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle
from models.testing import make_random_bundle
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, png_bytes

from ..conftest import ADMIN_KEY, DIM
from ..redeploy import (
    distinguishing_probes,
    enrol_images,
    enrolled_images,
    identify_images,
    nan_bundle,
    wait_job,
)

OLD, NEW = "random@1", "random@2"


@pytest.fixture(scope="module")
def new_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same embedding size, other weights: an index that kept old vectors would still answer,
    # wrongly, instead of failing on a dimension mismatch.
    path = tmp_path_factory.mktemp("new") / "random-2"
    make_random_bundle(path, seed=5, embedding_dim=DIM, version="2")
    return path


def open_client(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.headers["X-API-Key"] = ADMIN_KEY
    return client


@pytest.fixture
def slow_settings(settings: Settings) -> Settings:
    """A migration that stalls after its first chunk until the service stops."""
    return settings.model_copy(update={"migration_chunk_size": 1, "migration_pause_ms": 600_000})


def original_top(result: dict, originals: set[str]) -> str:
    """The best of the originally enrolled subjects (late enrolments are ignored)."""
    return next(c["subject_id"] for c in result["candidates"] if c["subject_id"] in originals)


def test_migration_under_identify_traffic_switches_atomically(
    settings: Settings, bundle_path: Path, new_bundle: Path
) -> None:
    settings = settings.model_copy(update={"migration_chunk_size": 8, "migration_pause_ms": 15})
    old, new = load_bundle(bundle_path), load_bundle(new_bundle)
    images = enrolled_images(12, 20)
    probes, old_expected, new_expected = distinguishing_probes(old, new, images, count=6)
    expected = {OLD: old_expected, NEW: new_expected}
    originals = set(images)
    headers = {"X-API-Key": ADMIN_KEY}
    with ServerThread(create_app(settings)) as server:
        admin = httpx.Client(base_url=server.url, headers=headers, timeout=30)
        assert admin.post("/v1/models", json={"path": str(new_bundle)}).status_code == 201
        assert admin.post("/v1/galleries", json={"name": "g"}).status_code == 201
        enrol_images(admin, "g", images)
        stop = threading.Event()
        logs: list[list[tuple[int, float, dict | str]]] = [[] for _ in range(4)]

        def traffic(log: list) -> None:
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    response = client.post(
                        "/v1/galleries/g/identify",
                        json={
                            "images": [base64.b64encode(p).decode() for p in probes],
                            "top_k": 100,
                        },
                    )
                    body = response.json() if response.status_code == 200 else response.text
                    log.append((response.status_code, time.monotonic() - started, body))

        threads = [threading.Thread(target=traffic, args=(log,)) for log in logs]
        for thread in threads:
            thread.start()
        job_id = admin.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
        # Enrol new subjects while the job runs: none may be lost, all end up on the new model.
        late: dict[str, bytes] = {}
        acknowledged_while_running = 0
        for number in range(200):
            subject, image = f"late{number}", png_bytes(50_000 + number)
            admin.put(f"/v1/galleries/g/subjects/{subject}")
            response = admin.post(
                f"/v1/galleries/g/subjects/{subject}/samples",
                json={"images": [base64.b64encode(image).decode()]},
            )
            assert response.status_code == 201, response.text
            late[subject] = image
            job = admin.get(f"/v1/jobs/{job_id}").json()
            if job["status"] != "running":
                break
            acknowledged_while_running += 1
        job = wait_job(admin, job_id)
        # Keep the traffic going until every thread has seen the new model a few times.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            sum(isinstance(e[2], dict) and e[2]["model"] == NEW for e in log) >= 3 for log in logs
        ):
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join()

        assert job["status"] == "succeeded", job
        assert job["progress"]["done"] == job["progress"]["total"] >= 240
        assert acknowledged_while_running >= 1
        entries = [entry for log in logs for entry in log]
        assert [e for e in entries if e[0] != 200] == []  # zero failed requests
        assert max(e[1] for e in entries) < 2.0  # none slowed to seconds
        for log in logs:
            models = [body["model"] for _, _, body in log]
            assert set(models) <= {OLD, NEW}
            # Atomic: once a thread saw the new model it never sees the old one again.
            switch = models.index(NEW)
            assert set(models[:switch]) == {OLD} and set(models[switch:]) == {NEW}
        for _, _, body in entries:
            # Each answer is that model's answer: its probe embedding searched its own index.
            tops = [original_top(result, originals) for result in body["results"]]
            assert tops == expected[body["model"]], body["model"]
        assert sum(body["model"] == OLD for _, _, body in entries) >= 4

        gallery = admin.get("/v1/galleries/g").json()
        assert gallery["model"] == NEW
        assert gallery["sample_count"] == 240 + len(late)
        for subject in late:
            detail = admin.get(f"/v1/galleries/g/subjects/{subject}").json()
            assert [s["model"] for s in detail["samples"]] == [NEW]
        # The late images were embedded by the new network: as probes they score 1.
        answers = identify_images(admin, "g", list(late.values())).json()
        assert answers["model"] == NEW
        assert [r["candidates"][0]["subject_id"] for r in answers["results"]] == list(late)
        assert min(r["score"] for r in answers["results"]) > 0.9999
        listed = {m["model"]: m["galleries"] for m in admin.get("/v1/models").json()["models"]}
        assert listed == {OLD: [], NEW: ["g"]}
        admin.close()


def test_migration_refusals(client: TestClient, new_bundle: Path, tmp_path: Path) -> None:
    assert client.post("/v1/models", json={"path": str(new_bundle)}).status_code == 201
    client.post("/v1/galleries", json={"name": "vectors"})
    client.put("/v1/galleries/vectors/subjects/a")
    vector = np.random.default_rng(0).standard_normal(DIM).tolist()
    client.post("/v1/galleries/vectors/subjects/a/samples", json={"embeddings": [vector]})
    response = client.post("/v1/galleries/vectors/migrate", json={"model": NEW})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "cannot_migrate" and "embeddings" in error["message"]
    client.post("/v1/galleries", json={"name": "forgetful", "keep_images": False})
    enrol_images(client, "forgetful", {"a": [png_bytes(1)]})
    response = client.post("/v1/galleries/forgetful/migrate", json={"model": NEW})
    assert response.status_code == 409 and "keep" in response.json()["error"]["message"]
    client.post("/v1/galleries", json={"name": "g"})
    unknown = client.post("/v1/galleries/g/migrate", json={"model": "random@9"})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_model"
    same = client.post("/v1/galleries/g/migrate", json={"model": OLD})
    assert same.status_code == 409 and same.json()["error"]["code"] == "already_on_model"
    assert client.post("/v1/galleries/nope/migrate", json={"model": NEW}).status_code == 404
    # A model whose calibration set (50 searches) cannot calibrate the gallery's fpir 0.01.
    small = make_random_bundle(tmp_path / "small", seed=4, version="small", calibration_size=50)
    assert client.post("/v1/models", json={"path": str(small.path)}).status_code == 201
    response = client.post("/v1/galleries/g/migrate", json={"model": "random@small"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "target_unsupported_fpir"
    assert "fpir >= 0.2" in response.json()["error"]["message"]
    assert client.get("/v1/jobs/0123456789abcdef").status_code == 404
    key = client.post("/v1/keys", json={"scope": "client"}).json()["key"]
    forbidden = client.post(
        "/v1/galleries/g/migrate", json={"model": NEW}, headers={"X-API-Key": key}
    )
    assert forbidden.status_code == 403
    # Nothing was started by any of these.
    assert {g["name"]: g["model"] for g in client.get("/v1/galleries").json()["galleries"]} == {
        "forgetful": OLD,
        "g": OLD,
        "vectors": OLD,
    }


def test_empty_gallery_migrates(client: TestClient, new_bundle: Path) -> None:
    client.post("/v1/models", json={"path": str(new_bundle)})
    client.post("/v1/galleries", json={"name": "g"})
    job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
    job = wait_job(client, job_id)
    assert job["status"] == "succeeded" and job["progress"] == {"done": 0, "total": 0}
    assert client.get("/v1/galleries/g").json()["model"] == NEW


def test_failed_migration_leaves_the_gallery_on_its_old_model(
    client: TestClient, new_bundle: Path, tmp_path: Path
) -> None:
    broken = nan_bundle(tmp_path / "nan")
    assert client.post("/v1/models", json={"path": str(broken.path)}).status_code == 201
    client.post("/v1/galleries", json={"name": "g"})
    images = enrolled_images(3, 2)
    enrol_images(client, "g", images)
    before = identify_images(client, "g", images["s1"]).json()
    response = client.post("/v1/galleries/g/migrate", json={"model": broken.manifest.model_id})
    assert response.status_code == 202
    job = wait_job(client, response.json()["job_id"])
    assert job["status"] == "failed" and "not finite" in job["error"]
    assert job["from_model"] == OLD and job["to_model"] == "random@nan"
    assert client.get("/v1/galleries/g").json()["model"] == OLD
    assert identify_images(client, "g", images["s1"]).json() == before
    detail = client.get("/v1/galleries/g/subjects/s1").json()
    assert {s["model"] for s in detail["samples"]} == {OLD}
    # A failed job does not block the next one.
    client.post("/v1/models", json={"path": str(new_bundle)})
    job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
    assert wait_job(client, job_id)["status"] == "succeeded"
    assert identify_images(client, "g", images["s1"]).json()["model"] == NEW


def test_a_stopped_migration_resumes_at_the_next_start(
    slow_settings: Settings, settings: Settings, bundle_path: Path, new_bundle: Path
) -> None:
    old, new = load_bundle(bundle_path), load_bundle(new_bundle)
    images = enrolled_images(4, 3)
    probes, old_expected, new_expected = distinguishing_probes(old, new, images, count=3)
    with open_client(slow_settings) as client:
        client.post("/v1/models", json={"path": str(new_bundle)})
        client.post("/v1/galleries", json={"name": "g"})
        enrol_images(client, "g", images)
        job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
        job = wait_job(client, job_id, until=lambda job: job["progress"]["done"] >= 1)
        assert job["status"] == "running" and job["progress"] == {"done": 1, "total": 12}
        second = client.post("/v1/galleries/g/migrate", json={"model": NEW})
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "migration_running"
        answers = identify_images(client, "g", probes).json()
        assert answers["model"] == OLD
        assert [r["candidates"][0]["subject_id"] for r in answers["results"]] == old_expected
        stopping = time.monotonic()
    # The shutdown did not wait for the 10-minute pause, and left the job to resume.
    assert time.monotonic() - stopping < 20
    with open_client(settings) as client:
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
        assert job["progress"] == {"done": 12, "total": 12}
        answers = identify_images(client, "g", probes).json()
        assert answers["model"] == NEW
        assert [r["candidates"][0]["subject_id"] for r in answers["results"]] == new_expected


def test_an_embedding_enrolled_during_a_migration_fails_the_job_not_the_gallery(
    settings: Settings, new_bundle: Path
) -> None:
    # Slow enough (3 chunks, 300 ms apart) that the enrolment below lands during the job.
    paced = settings.model_copy(update={"migration_chunk_size": 1, "migration_pause_ms": 300})
    with open_client(paced) as client:
        client.post("/v1/models", json={"path": str(new_bundle)})
        client.post("/v1/galleries", json={"name": "g"})
        images = enrolled_images(1, 3)
        enrol_images(client, "g", images)
        job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
        vector = np.random.default_rng(0).standard_normal(DIM).tolist()
        response = client.post("/v1/galleries/g/subjects/s0/samples", json={"embeddings": [vector]})
        assert response.status_code == 201  # acknowledged, and kept
        job = wait_job(client, job_id)
        assert job["status"] == "failed" and "no stored image" in job["error"]
        gallery = client.get("/v1/galleries/g").json()
        assert gallery["model"] == OLD and gallery["sample_count"] == 4
        answer = client.post(
            "/v1/galleries/g/identify", json={"embeddings": [vector], "top_k": 1}
        ).json()
        assert answer["model"] == OLD
        assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_deleting_the_gallery_fails_its_migration(settings: Settings, new_bundle: Path) -> None:
    paced = settings.model_copy(update={"migration_chunk_size": 1, "migration_pause_ms": 300})
    with open_client(paced) as client:
        client.post("/v1/models", json={"path": str(new_bundle)})
        client.post("/v1/galleries", json={"name": "g"})
        enrol_images(client, "g", enrolled_images(1, 3))
        job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
        assert client.delete("/v1/galleries/g").status_code == 204
        # A new gallery under the same name is not the one the job was migrating.
        client.post("/v1/galleries", json={"name": "g"})
        images = enrolled_images(2, 2, offset=500)
        enrol_images(client, "g", images)
        job = wait_job(client, job_id)
        assert job["status"] == "failed" and "'g'" in job["error"]
        assert client.get("/v1/galleries/g").json()["model"] == OLD
        answer = identify_images(client, "g", images["s1"]).json()
        assert answer["model"] == OLD
        assert [r["candidates"][0]["subject_id"] for r in answer["results"]] == ["s1", "s1"]


def test_a_job_whose_switch_committed_before_a_crash_is_settled_at_start(
    settings: Settings, new_bundle: Path
) -> None:
    from service.storage.sqlite import SQLiteStore

    with open_client(settings) as client:
        client.post("/v1/models", json={"path": str(new_bundle)})
        client.post("/v1/galleries", json={"name": "g"})
    # What a crash right after the switch transaction leaves: the gallery on the new model,
    # the job still "running".
    store = SQLiteStore(settings.database_path)
    store.create_job("crashed", "migrate", "g", OLD, NEW)
    store.switch_gallery_model("g", OLD, NEW, None)
    store.close()
    with open_client(settings) as client:
        job = wait_job(client, "crashed")
        assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None
        assert client.get("/v1/galleries/g").json()["model"] == NEW

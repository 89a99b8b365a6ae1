"""A server process killed (kill -9) in the middle of a migration resumes it at the next start,
from where it stopped, and the gallery answers with its old model until the switch."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from models.bundle import load_bundle
from models.testing import make_random_bundle
from service.testing import ServerProcess

from ..conftest import ADMIN_KEY
from ..redeploy import (
    distinguishing_probes,
    enrol_images,
    enrolled_images,
    identify_images,
    wait_job,
)

OLD, NEW = "random@1", "random@3"
# Stall after each chunk of 8 until the process dies or stops: the job is caught mid-way.
STALLING = {"OPENGALLERY_MIGRATION_CHUNK_SIZE": "8", "OPENGALLERY_MIGRATION_PAUSE_MS": "600000"}


@pytest.fixture(scope="module")
def wider_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Another network with another embedding size.
    path = tmp_path_factory.mktemp("wider") / "random-3"
    make_random_bundle(path, seed=9, embedding_dim=24, version="3")
    return path


def tops(body: dict) -> list[str]:
    return [result["candidates"][0]["subject_id"] for result in body["results"]]


def test_kill_during_migration_resumes_and_switches(
    tmp_path: Path, bundle_path: Path, wider_bundle: Path
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    images = enrolled_images(8, 5)  # 40 samples: 5 chunks of 8
    probes, old_expected, new_expected = distinguishing_probes(
        load_bundle(bundle_path), load_bundle(wider_bundle), images, count=4
    )
    headers = {"X-API-Key": ADMIN_KEY}

    def server(env: dict[str, str]) -> ServerProcess:
        return ServerProcess(data_dir, bundle_path, admin_key=ADMIN_KEY, env=env, log_path=log)

    first = server(STALLING).start()
    try:
        with httpx.Client(base_url=first.url, headers=headers, timeout=30) as client:
            assert client.post("/v1/models", json={"path": str(wider_bundle)}).status_code == 201
            assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
            enrol_images(client, "g", images)
            job_id = client.post("/v1/galleries/g/migrate", json={"model": NEW}).json()["job_id"]
            job = wait_job(client, job_id, until=lambda job: job["progress"]["done"] >= 8)
            assert job["status"] == "running" and job["progress"] == {"done": 8, "total": 40}
            assert tops(identify_images(client, "g", probes).json()) == old_expected
    finally:
        first.kill()  # SIGKILL mid-migration: no shutdown handler runs

    # Resumed, not restarted: the 8 shadow embeddings committed before the kill are kept, so
    # the next stall comes at 16 (a job started over would stall at 8 again).
    with (
        server(STALLING) as second,
        httpx.Client(base_url=second.url, headers=headers, timeout=30) as client,
    ):
        job = wait_job(client, job_id, until=lambda job: job["progress"]["done"] >= 16)
        assert job["status"] == "running" and job["attempts"] == 2
        assert job["progress"] == {"done": 16, "total": 40}
        body = identify_images(client, "g", probes).json()
        assert body["model"] == OLD and tops(body) == old_expected
    # A clean stop (SIGTERM) leaves it running too; the third start finishes it.
    with (
        server({}) as third,
        httpx.Client(base_url=third.url, headers=headers, timeout=30) as client,
    ):
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 3
        assert job["progress"] == {"done": 40, "total": 40}
        body = identify_images(client, "g", probes).json()
        assert body["model"] == NEW and tops(body) == new_expected
        gallery = client.get("/v1/galleries/g").json()
        assert gallery["model"] == NEW and gallery["sample_count"] == 40
        for subject in images:
            samples = client.get(f"/v1/galleries/g/subjects/{subject}").json()["samples"]
            assert [s["model"] for s in samples] == [NEW] * 5

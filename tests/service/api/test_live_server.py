"""Over real HTTP against uvicorn on loopback: full flow, restart, kill -9, concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerProcess, ServerThread, png_bytes

from ..conftest import ADMIN_KEY, unit

HEADERS = {"X-API-Key": ADMIN_KEY}


def snapshot(client: httpx.Client, probes: list[bytes]) -> dict:
    """Everything a user can observe about gallery g (except timestamps of nothing)."""
    subjects = client.get("/v1/galleries/g/subjects", params={"limit": 1000}).json()
    details = [
        client.get(f"/v1/galleries/g/subjects/{s['subject_id']}").json()
        for s in subjects["subjects"]
    ]
    answers = client.post(
        "/v1/galleries/g/identify",
        files=[("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(probes)],
        data={"top_k": "3"},
    ).json()
    return {
        "galleries": client.get("/v1/galleries").json(),
        "subjects": details,
        "answers": answers,
    }


def test_full_flow_restart_over_http(tmp_path: Path, bundle_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir, bundle_path, admin_key=ADMIN_KEY, log_path=tmp_path / "server.log"
    )
    probes = [png_bytes(seed) for seed in (1, 11, 500)]
    with server, httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["ready"] is True
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        for subject, seeds in (("José", (1, 2)), ("ana", (11, 12)), ("名前", (21,))):
            assert client.put(f"/v1/galleries/g/subjects/{subject}").status_code == 201
            response = client.post(
                f"/v1/galleries/g/subjects/{subject}/samples",
                files=[("images", (f"{s}.png", png_bytes(s), "image/png")) for s in seeds],
            )
            assert response.status_code == 201, response.text
        before = snapshot(client, probes)
        answers = before["answers"]["results"]
        assert [r["subject_id"] for r in answers[:2]] == ["José", "ana"]
        assert answers[2]["candidates"][0]["score"] < 0.99
        verify = client.post(
            "/v1/galleries/g/verify",
            files=[("image", ("p.png", probes[0], "image/png"))],
            data={"subject_id": "José"},
        ).json()
        assert verify["match"] is True and verify["score"] == pytest.approx(1.0, abs=1e-5)
        metrics = client.get("/metrics").text
        assert "opengallery_gallery_samples 5" in metrics
        assert 'opengallery_decisions_total{decision="known"}' in metrics
        assert "x-request-id" in client.get("/healthz").headers
    # A clean restart on the same data directory answers identically.
    with (
        ServerProcess(data_dir, bundle_path, admin_key=ADMIN_KEY) as again,
        httpx.Client(base_url=again.url, headers=HEADERS, timeout=30) as client,
    ):
        assert snapshot(client, probes) == before


def test_kill_9_during_batch_enrolment_loses_nothing_acknowledged(
    tmp_path: Path, bundle_path: Path
) -> None:
    rng = np.random.default_rng(5)
    data_dir = tmp_path / "data"
    vectors = {f"p{i:03d}": unit(rng, 4) for i in range(120)}
    acknowledged: dict[str, list[int]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    server = ServerProcess(data_dir, bundle_path, admin_key=ADMIN_KEY).start()
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
            assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201

        def enrol(subject: str) -> None:
            try:
                with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
                    if client.put(f"/v1/galleries/g/subjects/{subject}").status_code != 201:
                        return
                    response = client.post(
                        f"/v1/galleries/g/subjects/{subject}/samples",
                        json={"embeddings": vectors[subject].tolist()},
                    )
            except httpx.HTTPError:
                return  # the server died: this request was never acknowledged
            if response.status_code == 201:
                with lock:
                    acknowledged[subject] = [s["sample_id"] for s in response.json()["samples"]]
                    if len(acknowledged) >= 30:
                        enough.set()

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(enrol, subject) for subject in vectors]
            assert enough.wait(timeout=120)
            server.kill()  # SIGKILL in the middle of the batch
            for future in futures:
                future.result()
    finally:
        server.kill()
    assert 30 <= len(acknowledged) < len(vectors)
    with (
        ServerProcess(data_dir, bundle_path, admin_key=ADMIN_KEY) as again,
        httpx.Client(base_url=again.url, headers=HEADERS, timeout=30) as client,
    ):
        listed = client.get("/v1/galleries/g/subjects", params={"limit": 1000}).json()["subjects"]
        stored = {
            s["subject_id"]: [
                x["sample_id"]
                for x in client.get(f"/v1/galleries/g/subjects/{s['subject_id']}").json()["samples"]
            ]
            for s in listed
        }
        for subject, sample_ids in acknowledged.items():
            assert stored[subject] == sample_ids  # every acknowledged sample is there
        # The index (rebuilt at start) and the database agree: same count, and every stored
        # sample is found as its own subject with score 1.
        gallery = client.get("/v1/galleries/g").json()
        stored_count = sum(len(ids) for ids in stored.values())
        assert gallery["sample_count"] == stored_count
        assert f"opengallery_gallery_samples {stored_count}" in client.get("/metrics").text
        for subject, sample_ids in stored.items():
            if not sample_ids:
                continue
            result = client.post(
                "/v1/galleries/g/identify",
                json={"embeddings": vectors[subject].tolist(), "top_k": 1},
            ).json()["results"]
            for row in result:
                assert row["candidates"][0]["subject_id"] == subject
                assert row["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_concurrent_enrol_and_identify(tmp_path: Path, bundle_path: Path) -> None:
    rng = np.random.default_rng(6)
    settings = Settings(data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY)
    seeded = {f"seed{i:02d}": unit(rng, 1) for i in range(20)}
    fresh = {f"new{i:03d}": unit(rng, 2) for i in range(60)}
    failures: list[str] = []
    with ServerThread(create_app(settings)) as server:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
            assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
            for subject, vectors in seeded.items():
                client.put(f"/v1/galleries/g/subjects/{subject}")
                client.post(
                    f"/v1/galleries/g/subjects/{subject}/samples",
                    json={"embeddings": vectors.tolist()},
                )
        done = threading.Event()

        def enrol(subjects: list[str]) -> None:
            with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
                for subject in subjects:
                    client.put(f"/v1/galleries/g/subjects/{subject}")
                    response = client.post(
                        f"/v1/galleries/g/subjects/{subject}/samples",
                        json={"embeddings": fresh[subject].tolist()},
                    )
                    if response.status_code != 201:
                        failures.append(f"enrol {subject}: {response.text}")

        def identify() -> int:
            checked = 0
            names = list(seeded)
            probes = np.vstack([seeded[name] for name in names])
            with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
                while not done.is_set() or checked == 0:
                    response = client.post(
                        "/v1/galleries/g/identify", json={"embeddings": probes.tolist()}
                    )
                    if response.status_code != 200:
                        failures.append(f"identify: {response.text}")
                        return checked
                    for name, result in zip(names, response.json()["results"], strict=True):
                        top = result["candidates"][0]
                        subjects = [c["subject_id"] for c in result["candidates"]]
                        if top["subject_id"] != name or abs(top["score"] - 1) > 1e-5:
                            failures.append(f"identify {name}: {result}")
                        if len(set(subjects)) != len(subjects):
                            failures.append(f"duplicate candidates: {subjects}")
                    checked += 1
            return checked

        subjects = list(fresh)
        with ThreadPoolExecutor(max_workers=7) as pool:
            readers = [pool.submit(identify) for _ in range(3)]
            writers = [pool.submit(enrol, subjects[i::4]) for i in range(4)]
            for writer in writers:
                writer.result()
            done.set()
            assert all(reader.result() > 0 for reader in readers)
        assert failures == []
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
            gallery = client.get("/v1/galleries/g").json()
            assert gallery["subject_count"] == 80
            assert gallery["sample_count"] == 20 + 2 * 60
            probes = np.vstack([fresh[name][1] for name in subjects])
            results = client.post(
                "/v1/galleries/g/identify", json={"embeddings": probes[:64].tolist()}
            ).json()["results"]
            assert [r["candidates"][0]["subject_id"] for r in results] == subjects[:60]

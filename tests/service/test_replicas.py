"""Replicas as they run: `opengallery serve` processes on one PostgreSQL, on loopback ports.

An enrolment acknowledged by one replica is searchable on the other within 1 s, a key revoked
on one is refused by the other within 1 s, a replica that restarts catches up, and a replica
killed with SIGKILL during concurrent enrolment through both loses no acknowledged sample: after
its restart both indexes equal the database.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.testing import ServerProcess, worker_pids

from .conftest import ADMIN_KEY, DIM, unit

VISIBLE_WITHIN_S = 1.0


def replica(
    tmp_path: Path, name: str, bundle_path: Path, database_url: str, **env: str
) -> ServerProcess:
    """A replica's server, not started. Start each before making the next: each takes a free
    port when it is made, and two made together could be handed the same one."""
    return ServerProcess(
        tmp_path / name,
        bundle_path,
        admin_key=ADMIN_KEY,
        env={"OPENGALLERY_DATABASE_URL": database_url, **env},
        log_path=tmp_path / f"{name}.log",
    )


@pytest.fixture
def two_replicas(
    tmp_path: Path, bundle_path: Path, postgres_url: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with ExitStack() as stack:
        a = stack.enter_context(replica(tmp_path, "a", bundle_path, postgres_url))
        b = stack.enter_context(replica(tmp_path, "b", bundle_path, postgres_url))
        yield a, b


def client(server: ServerProcess, key: str = ADMIN_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30.0)


def best_many(http: httpx.Client, gallery: str, probes: np.ndarray) -> list[str | None]:
    """The best subject of each probe (32 probes per request)."""
    found: list[str | None] = []
    for start in range(0, len(probes), 32):
        response = http.post(
            f"/v1/galleries/{gallery}/identify",
            json={"embeddings": probes[start : start + 32].tolist(), "top_k": 1},
        )
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            candidates = result["candidates"]
            found.append(candidates[0]["subject_id"] if candidates else None)
    return found


def best(http: httpx.Client, gallery: str, probe: np.ndarray) -> str | None:
    return best_many(http, gallery, probe[None, :])[0]


def indexed(http: httpx.Client) -> tuple[int, int]:
    """(subjects, samples) the replica's indexes hold, from its metrics."""
    text = http.get("/metrics").text
    subjects = re.search(r"^opengallery_gallery_subjects (\d+)", text, re.M)
    samples = re.search(r"^opengallery_gallery_samples (\d+)", text, re.M)
    assert subjects and samples, text
    return int(subjects.group(1)), int(samples.group(1))


def in_database(http: httpx.Client, gallery: str) -> tuple[int, int]:
    record = http.get(f"/v1/galleries/{gallery}").json()
    return record["subject_count"], record["sample_count"]


def enrol(http: httpx.Client, gallery: str, subject: str, vector: np.ndarray) -> int:
    response = http.post(
        f"/v1/galleries/{gallery}/samples",
        json={
            "create_subjects": True,
            "items": [{"subject_id": subject, "embedding": vector.tolist()}],
        },
    )
    assert response.status_code == 201, response.text
    outcome = response.json()["samples"][0]
    assert outcome["status"] == "enrolled", outcome
    return int(outcome["sample_id"])


def enrol_one_at_a_time(fresh, vectors: np.ndarray) -> list[float]:  # type: ignore[no-untyped-def]
    """Enrol subject w<i> with vectors[i] through `fresh(method, path, body)` (a new connection
    per request, so that any worker may answer), one at a time; for each, the seconds until
    four identify requests in a row find it first."""
    delays = []
    for i, vector in enumerate(vectors):
        item = {"subject_id": f"w{i}", "embedding": vector.tolist()}
        body = {"create_subjects": True, "items": [item]}
        assert fresh("POST", "/v1/galleries/g/samples", body).status_code == 201

        def everywhere(v: np.ndarray = vector, name: str = f"w{i}") -> bool:
            probe = {"embeddings": [v.tolist()], "top_k": 1}
            answers = [fresh("POST", "/v1/galleries/g/identify", probe) for _ in range(4)]
            found = [a.json()["results"][0]["candidates"] for a in answers]
            return all(best and best[0]["subject_id"] == name for best in found)

        delays.append(seconds_until(everywhere))
    return delays


def seconds_until(condition, deadline_s: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `condition()` holds, polled as fast as the replica answers."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline_s:
            raise TimeoutError(f"not within {deadline_s} s")
    return time.monotonic() - start


def test_enrolment_and_revocation_reach_the_other_replica_and_a_restart_catches_up(
    two_replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_replicas
    rng = np.random.default_rng(11)
    with client(a) as on_a, client(b) as on_b:
        assert on_a.post("/v1/galleries", json={"name": "g"}).status_code == 201
        vectors = unit(rng, 6)
        delays = []
        for i, vector in enumerate(vectors):
            enrol(on_a, "g", f"s{i}", vector)
            delays.append(seconds_until(lambda v=vector, i=i: best(on_b, "g", v) == f"s{i}"))
        assert max(delays) <= VISIBLE_WITHIN_S, delays

        key = on_a.post("/v1/keys", json={"scope": "client"}).json()
        with client(b, key["key"]) as as_client_on_b:
            assert as_client_on_b.get("/v1/galleries").status_code == 200  # cached by b
            assert on_a.delete(f"/v1/keys/{key['key_id']}").status_code == 204
            refused = seconds_until(lambda: as_client_on_b.get("/v1/galleries").status_code == 401)
        assert refused <= VISIBLE_WITHIN_S

        # b stops; a goes on writing; b starts again and catches up.
        b.stop()
        more = unit(rng, 4)
        for i, vector in enumerate(more):
            enrol(on_a, "g", f"t{i}", vector)
        assert on_a.delete("/v1/galleries/g/subjects/s0").status_code == 204
        b.start()
        assert in_database(on_b, "g") == indexed(on_b) == indexed(on_a) == (9, 9)
        for i, vector in enumerate(more):
            assert best(on_b, "g", vector) == f"t{i}"
        assert best(on_b, "g", vectors[0]) != "s0"
        probes = unit(rng, 5)
        answers = on_a.post("/v1/galleries/g/identify", json={"embeddings": probes.tolist()})
        again = on_b.post("/v1/galleries/g/identify", json={"embeddings": probes.tolist()})
        assert again.json()["results"] == answers.json()["results"]


def test_a_replica_killed_during_enrolment_through_both_loses_no_acknowledged_sample(
    two_replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_replicas
    rng = np.random.default_rng(12)
    vectors = unit(rng, 400)
    acknowledged: dict[int, tuple[str, int]] = {}  # vector index -> (subject, sample id)
    lock = threading.Lock()
    with client(a) as on_a:
        assert on_a.post("/v1/galleries", json={"name": "g"}).status_code == 201
        half = threading.Event()

        def writer(server: ServerProcess, indexes: range) -> None:
            with client(server) as http:
                for i in indexes:
                    try:
                        sample_id = enrol(http, "g", f"p{i}", vectors[i])
                    except httpx.TransportError:
                        return  # the replica is gone: this write was never acknowledged
                    with lock:
                        acknowledged[i] = (f"p{i}", sample_id)
                        if len(acknowledged) >= 100:
                            half.set()

        writers = [
            threading.Thread(target=writer, args=(server, range(start, start + 200)))
            for server, start in ((a, 0), (b, 200))
        ]
        for thread in writers:
            thread.start()
        assert half.wait(60)
        a.kill()
        for thread in writers:
            thread.join(120)
        a.start()
        assert all(i in acknowledged for i in range(200, 400))  # b's writer finished
        assert not all(i in acknowledged for i in range(200))  # a's was cut short
        subjects, samples = in_database(on_a, "g")
        assert samples >= len(acknowledged)  # also writes committed but never acknowledged
        for server in (a, b):
            with client(server) as http:
                seconds_until(lambda h=http: indexed(h) == (subjects, samples))
                order = sorted(acknowledged)
                found = best_many(http, "g", vectors[order])
                assert found == [acknowledged[i][0] for i in order]


def test_workers_on_sqlite_serve_one_port_and_follow_each_other(
    tmp_path: Path, bundle_path: Path
) -> None:
    """`serve --workers 2` on the default SQLite: two processes on one port; each request on
    its own connection lands on either, and each finds what the other enrolled within 1 s;
    /metrics, from either, counts the requests of both."""
    server = ServerProcess(
        tmp_path / "data",
        bundle_path,
        admin_key=ADMIN_KEY,
        env={"OPENGALLERY_WORKERS": "2"},
        log_path=tmp_path / "workers.log",
    )
    rng = np.random.default_rng(13)
    headers = {"X-API-Key": ADMIN_KEY}
    with server:
        assert server.process is not None
        assert len(worker_pids(server.process.pid)) == 2

        identified = 0

        def fresh(method: str, path: str, body: object) -> httpx.Response:
            nonlocal identified
            identified += path.endswith("/identify")
            return httpx.request(method, server.url + path, json=body, headers=headers)

        assert fresh("POST", "/v1/galleries", {"name": "g"}).status_code == 201
        vectors = unit(rng, 10)
        delays = enrol_one_at_a_time(fresh, vectors)
        assert max(delays) <= VISIBLE_WITHIN_S, delays
        for _ in range(4):  # fresh connections: either worker answers
            text = httpx.get(server.url + "/metrics").text
            counted = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("opengallery_http_requests_total{")
                and 'route="/v1/galleries/{gallery}/identify"' in line
            )
            assert counted == identified


def test_workers_on_milvus_share_one_collection(
    tmp_path: Path, bundle_path: Path, milvus_url: str
) -> None:
    """`serve --workers 2` on SQLite and one Milvus: enrolments through fresh connections land
    on either process, each is found by both within 1 s, and the gallery's one collection
    holds each sample once (the follower of the other process wrote nothing)."""
    from pymilvus import MilvusClient

    from service.index.milvus import MilvusConfig

    server = ServerProcess(
        tmp_path / "data",
        bundle_path,
        admin_key=ADMIN_KEY,
        env={"OPENGALLERY_WORKERS": "2", "OPENGALLERY_INDEX_URL": milvus_url},
        log_path=tmp_path / "workers.log",
    )
    rng = np.random.default_rng(17)
    headers = {"X-API-Key": ADMIN_KEY}
    with server:
        assert server.process is not None
        assert len(worker_pids(server.process.pid)) == 2

        def fresh(method: str, path: str, body: object) -> httpx.Response:
            return httpx.request(method, server.url + path, json=body, headers=headers)

        assert fresh("POST", "/v1/galleries", {"name": "g"}).status_code == 201
        vectors = unit(rng, 8)
        delays = enrol_one_at_a_time(fresh, vectors)
        assert max(delays) <= VISIBLE_WITHIN_S, delays
        model_id = fresh("GET", "/v1/galleries/g", None).json()["model"]
    config = MilvusConfig(milvus_url)
    client = MilvusClient(uri=config.uri)
    try:
        rows = client.query(
            config.collection_name("g", model_id), filter="kind == 0", output_fields=["id"]
        )
    finally:
        client.close()
    assert len(rows) == len({row["id"] for row in rows}) == len(vectors)


def test_workers_with_sq8_keep_their_files_in_slots_and_reuse_their_snapshots(
    tmp_path: Path, bundle_path: Path
) -> None:
    """`serve --workers 2` with `storage=sq8`: each worker indexes every enrolment in row files
    of its own slot directory and answers from it; after a clean stop, the restarted workers
    take the two slots again and load their snapshots instead of building."""
    data = tmp_path / "data"
    log_path = tmp_path / "workers.log"
    server = ServerProcess(
        data,
        bundle_path,
        admin_key=ADMIN_KEY,
        env={"OPENGALLERY_WORKERS": "2", "OPENGALLERY_INDEX_URL": "faiss://?storage=sq8"},
        log_path=log_path,
        log_level="info",
    )
    slots = [data / "index" / "worker-0", data / "index" / "worker-1"]
    rng = np.random.default_rng(19)
    vectors = unit(rng, 6)
    headers = {"X-API-Key": ADMIN_KEY}

    def fresh(method: str, path: str, body: object) -> httpx.Response:
        return httpx.request(method, server.url + path, json=body, headers=headers)

    def all_found() -> bool:
        probes = {"embeddings": vectors.tolist(), "top_k": 1}
        for _ in range(4):  # fresh connections: either worker answers
            results = fresh("POST", "/v1/galleries/g/identify", probes).json()["results"]
            names = [r["candidates"][0]["subject_id"] if r["candidates"] else None for r in results]
            if names != [f"w{i}" for i in range(len(vectors))]:
                return False
        return True

    def row_files() -> dict[Path, list[tuple[str, int]]]:
        return {
            slot: sorted((p.name, p.stat().st_size) for p in slot.glob("rows-*.f32"))
            for slot in slots
        }

    def every_slot_holds_every_sample() -> bool:
        files = row_files()
        return all(
            len(found) == 1 and found[0][1] == len(vectors) * DIM * 4 for found in files.values()
        )

    with server:
        assert server.process is not None
        assert len(worker_pids(server.process.pid)) == 2
        assert fresh("POST", "/v1/galleries", {"name": "g"}).status_code == 201
        for i, vector in enumerate(vectors):
            item = {"subject_id": f"w{i}", "embedding": vector.tolist()}
            body = {"create_subjects": True, "items": [item]}
            assert fresh("POST", "/v1/galleries/g/samples", body).status_code == 201
        seconds_until(every_slot_holds_every_sample)
        assert seconds_until(all_found) <= VISIBLE_WITHIN_S
        before = row_files()
    assert sorted(p.name for p in (data / "index").iterdir()) == ["slots", "worker-0", "worker-1"]
    for slot in slots:  # each worker saved its snapshot at the stop
        assert len(list(slot.glob("snapshot-*.json"))) == 1

    restarted_at = log_path.stat().st_size
    loaded = "gallery 'g': index snapshot at version"

    def both_loaded() -> bool:
        with open(log_path, "rb") as log:
            log.seek(restarted_at)
            return log.read().decode().count(loaded) == 2

    with server:
        seconds_until(both_loaded, deadline_s=60.0)
        assert all_found()
        assert row_files() == before  # the same files: nothing was built again
    text = log_path.read_bytes()[restarted_at:].decode()
    assert "indexed with" in text and "not current" not in text
    assert sorted(p.name for p in (data / "index").iterdir()) == ["slots", "worker-0", "worker-1"]


def test_workers_refuse_an_index_url_they_cannot_serve_in_one_line(
    tmp_path: Path,
    bundle_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from service import cli

    monkeypatch.setenv("OPENGALLERY_INDEX_URL", "faiss://?storage=sq4")
    argv = ["--workers", "2", "--data-dir", str(tmp_path), "--model", str(bundle_path)]
    assert cli.serve_main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        "opengallery serve: faiss:// storage must be one of ['float32', 'sq8'], got 'sq4'\n"
    )
    assert not (tmp_path / "opengallery.sqlite3").exists()  # refused before anything started


@pytest.fixture(scope="module")
def wider_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.testing import make_random_bundle

    path = tmp_path_factory.mktemp("wider") / "random-3"
    make_random_bundle(path, seed=9, embedding_dim=24, version="3")
    return path


def test_a_migration_runs_on_one_replica_and_moves_to_another_when_it_dies(
    tmp_path: Path, bundle_path: Path, wider_bundle: Path, postgres_url: str
) -> None:
    from .redeploy import enrol_images, enrolled_images, identify_images, wait_job

    new = "random@3"
    lease = {"OPENGALLERY_JOB_LEASE_SECONDS": "1"}
    with ExitStack() as stack:
        a = stack.enter_context(replica(tmp_path, "a", bundle_path, postgres_url, **lease))
        b = stack.enter_context(replica(tmp_path, "b", bundle_path, postgres_url, **lease))
        on_a, on_b = stack.enter_context(client(a)), stack.enter_context(client(b))
        assert on_a.post("/v1/models", json={"path": str(wider_bundle)}).status_code == 201
        for gallery in ("g", "h"):
            assert on_a.post("/v1/galleries", json={"name": gallery}).status_code == 201
            enrol_images(on_a, gallery, enrolled_images(4, 4))
        probes = [png for pngs in enrolled_images(2, 1, offset=500).values() for png in pngs]

        # Run by a alone; b switches when the switch reaches it through the change log.
        job_id = on_a.post("/v1/galleries/g/migrate", json={"model": new}).json()["job_id"]
        job = wait_job(on_a, job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        switched = seconds_until(lambda: identify_images(on_b, "g", probes).json()["model"] == new)
        assert switched <= VISIBLE_WITHIN_S

        # a stalls after its first chunk and is killed: b takes the job over and finishes it.
        a.stop()
        a.env.update(
            {"OPENGALLERY_MIGRATION_CHUNK_SIZE": "4", "OPENGALLERY_MIGRATION_PAUSE_MS": "600000"}
        )
        a.start()
        job_id = on_a.post("/v1/galleries/h/migrate", json={"model": new}).json()["job_id"]
        job = wait_job(on_a, job_id, until=lambda job: job["progress"]["done"] >= 4)
        # Three lease periods while a holds it: b never runs the job beside a.
        watched_until = time.monotonic() + 3.0
        while time.monotonic() < watched_until:
            job = on_b.get(f"/v1/jobs/{job_id}").json()
            assert (job["status"], job["attempts"], job["progress"]["done"]) == ("running", 1, 4)
            time.sleep(0.05)  # an observation window, not a synchronisation
        a.kill()
        job = wait_job(on_b, job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 2)
        assert job["progress"] == {"done": 16, "total": 16}
        assert identify_images(on_b, "h", probes).json()["model"] == new
        a.env.pop("OPENGALLERY_MIGRATION_PAUSE_MS")
        a.start()
        for gallery in ("g", "h"):
            assert identify_images(on_a, gallery, probes).json()["model"] == new
            assert identify_images(on_b, gallery, probes).json()["model"] == new
        assert on_a.get("/v1/galleries/h").json()["model"] == new

"""The service over real HTTP while its database or its Milvus server is down: /readyz names
the dependency, requests under load answer 503 with its code (never a 500, never a hang), and
both recover by themselves when the server is back, without a restart. Passwords in the URLs
reach neither the callers nor any log line.

Each test starts its own server (PostgreSQL from pgserver, `milvus-lite server`) so that it
can stop it and start it again on the same port with the same data.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.api.app import create_app
from service.settings import Settings
from service.storage.postgres import connection as postgres_connection
from service.testing import ServerThread
from service.testing_engines import MilvusServer, PostgresServer

from ..conftest import ADMIN_KEY, unit

SECRET = "pa55-w0rd-never-shown"
HEADERS = {"X-API-Key": ADMIN_KEY}
LOAD_THREADS = 4
REQUESTS_PER_THREAD = 3
# A request the service answers only after this long counts as a hang.
CLIENT_TIMEOUT_S = 30.0


def with_password(url: str, user: str) -> str:
    scheme, rest = url.split("://", 1)
    rest = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{SECRET}@{rest}"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every library's lines: the drivers', the pool's, gRPC's
    yield caplog
    assert SECRET not in caplog.text


def enrol_gallery(client: httpx.Client, vectors: np.ndarray) -> None:
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    for i, vector in enumerate(vectors):
        assert client.put(f"/v1/galleries/g/subjects/s{i}").status_code == 201
        response = client.post(
            f"/v1/galleries/g/subjects/s{i}/samples", json={"embeddings": [vector.tolist()]}
        )
        assert response.status_code == 201, response.text


def identify(client: httpx.Client, probes: np.ndarray) -> httpx.Response:
    return client.post("/v1/galleries/g/identify", json={"embeddings": probes.tolist(), "top_k": 3})


def under_load(url: str, request: object) -> list[httpx.Response]:
    """`request(client, i)` from LOAD_THREADS clients at once, REQUESTS_PER_THREAD each."""

    def one_client(thread: int) -> list[httpx.Response]:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S) as client:
            return [
                request(client, thread * REQUESTS_PER_THREAD + i)  # type: ignore[operator]
                for i in range(REQUESTS_PER_THREAD)
            ]

    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        return [r for batch in pool.map(one_client, range(LOAD_THREADS)) for r in batch]


def ready_again(client: httpx.Client, attempts: int = 60) -> dict:
    """/readyz until it answers 200; each attempt waits for the dependency's own timeout."""
    for _ in range(attempts):
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
    pytest.fail(f"not ready again: {response.json()}")


def assert_unavailable(responses: list[httpx.Response], code: str) -> None:
    for response in responses:
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == code and "retry later" in error["message"]
        assert SECRET not in response.text and "127.0.0.1" not in response.text


def test_database_down_under_load_then_back(
    settings: Settings, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_connection, "POOL_TIMEOUT_S", 1.0)  # wait 1 s, not 10
    rng = np.random.default_rng(5)
    vectors = unit(rng, 4)
    with PostgresServer() as database:
        url = with_password(database.admin_url, "postgres")  # trust: the password goes unused
        app = create_app(settings.model_copy(update={"database_url": url}))
        with (
            ServerThread(app) as server,
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S) as client,
        ):
            enrol_gallery(client, vectors)
            before = identify(client, vectors).json()
            assert client.get("/readyz").json()["unavailable"] == []

            database.halt()
            readiness = client.get("/readyz")
            assert readiness.status_code == 503
            assert readiness.json()["unavailable"] == ["database"]
            assert readiness.json()["ready"] is False
            writes = under_load(
                server.url,
                lambda c, i: c.put(f"/v1/galleries/g/subjects/new{i}"),
            )
            assert len(writes) == LOAD_THREADS * REQUESTS_PER_THREAD
            assert_unavailable(writes, "database_unavailable")

            database.resume()
            assert ready_again(client)["unavailable"] == []
            # Nothing refused was written; what was enrolled before is all there.
            assert client.get("/v1/galleries/g").json()["subject_count"] == len(vectors)
            assert client.put("/v1/galleries/g/subjects/after").status_code == 201
            assert identify(client, vectors).json()["results"] == before["results"]


def test_milvus_down_under_load_then_back(
    settings: Settings, logs: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(6)
    vectors = unit(rng, 5)
    probes = np.concatenate([vectors, unit(rng, 3)])
    with MilvusServer() as milvus:
        url = with_password(milvus.url, "root") + "?timeout=5"
        app = create_app(settings.model_copy(update={"index_url": url}))
        with (
            ServerThread(app) as server,
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S) as client,
        ):
            enrol_gallery(client, vectors)
            assert client.post("/v1/galleries", json={"name": "w"}).status_code == 201
            before = identify(client, probes)
            assert before.status_code == 200
            assert [r["subject_id"] for r in before.json()["results"][:5]] == [
                f"s{i}" for i in range(5)
            ]

            milvus.halt()
            readiness = client.get("/readyz")
            assert readiness.status_code == 503
            assert readiness.json()["unavailable"] == ["index"]
            searches = under_load(server.url, lambda c, i: identify(c, probes[i % len(probes) :]))
            assert_unavailable(searches, "index_unavailable")
            # A write the database committed but Milvus refused: 503 too; the sample reaches
            # the index once Milvus is back (the follower builds the gallery again). In its
            # own gallery, so that g's answers below do not depend on when it does.
            assert client.put("/v1/galleries/w/subjects/late").status_code == 201
            late = unit(rng, 1)
            refused = client.post(
                "/v1/galleries/w/subjects/late/samples", json={"embeddings": late.tolist()}
            )
            assert_unavailable([refused], "index_unavailable")

            milvus.resume()
            assert ready_again(client)["unavailable"] == []
            after = identify(client, probes)
            assert after.status_code == 200, after.text
            assert after.json()["results"] == before.json()["results"]
            found = found_within(client, "w", late, seconds=30.0)
            assert found["subject_id"] == "late" and found["score"] == pytest.approx(1.0)


def found_within(client: httpx.Client, gallery: str, probe: np.ndarray, seconds: float) -> dict:
    """The probe's identify result once the gallery's index answers with a candidate (the
    follower's rebuild is asynchronous); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.post(
            f"/v1/galleries/{gallery}/identify", json={"embeddings": probe.tolist(), "top_k": 1}
        )
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        if result["score"] is not None:
            return result
        assert time.monotonic() < deadline, f"{gallery}: the index never caught up"


def test_milvus_that_stops_answering_costs_its_timeout_not_a_hang(
    settings: Settings, logs: pytest.LogCaptureFixture
) -> None:
    """A server that accepts connections and never answers (frozen, or a network that drops
    packets): each request waits the URL's timeout, not pymilvus's minute of retries."""
    vectors = unit(np.random.default_rng(7), 3)
    with MilvusServer() as milvus:
        assert milvus.process is not None
        url = with_password(milvus.url, "root") + "?timeout=2"
        app = create_app(settings.model_copy(update={"index_url": url}))
        with (
            ServerThread(app) as server,
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S) as client,
        ):
            enrol_gallery(client, vectors)
            before = identify(client, vectors).json()
            os.kill(milvus.process.pid, signal.SIGSTOP)
            try:
                readiness = client.get("/readyz")
                assert readiness.status_code == 503
                assert readiness.json()["unavailable"] == ["index"]
                # The client gives up after CLIENT_TIMEOUT_S: a hang fails here.
                assert_unavailable(
                    under_load(server.url, lambda c, i: identify(c, vectors)), "index_unavailable"
                )
            finally:
                os.kill(milvus.process.pid, signal.SIGCONT)
            assert ready_again(client)["unavailable"] == []
            assert identify(client, vectors).json()["results"] == before["results"]


def test_a_frozen_database_is_reported_by_readyz_within_its_timeout(
    settings: Settings, logs: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL that accepts connections and never answers: /readyz says so in about 2 s
    (requests that reached it wait until it answers again: docs/scaling.md)."""
    with PostgresServer() as database:
        url = with_password(database.admin_url, "postgres")
        app = create_app(settings.model_copy(update={"database_url": url}))
        with (
            ServerThread(app) as server,
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=CLIENT_TIMEOUT_S) as client,
        ):
            enrol_gallery(client, unit(np.random.default_rng(8), 2))
            database.freeze()
            try:
                readiness = client.get("/readyz")  # a hang fails here, after CLIENT_TIMEOUT_S
            finally:
                database.thaw()
            assert readiness.status_code == 503
            assert readiness.json()["unavailable"] == ["database"]
            assert ready_again(client)["unavailable"] == []
            assert client.get("/v1/galleries/g").json()["subject_count"] == 2

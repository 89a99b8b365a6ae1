"""The whole service on PostgreSQL: it serves, keeps everything across a restart, and answers
503 `database_unavailable` while the database is out of reach, then serves again by itself."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.storage.postgres import connection as postgres_connection

from ..conftest import ADMIN_KEY, unit


@pytest.fixture
def on_postgres(settings: Settings, postgres_url: str) -> Settings:
    return settings.model_copy(update={"database_url": postgres_url})


def serve(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.headers["X-API-Key"] = ADMIN_KEY
    return client


def test_the_service_runs_on_postgresql_and_keeps_everything(on_postgres: Settings) -> None:
    rng = np.random.default_rng(0)
    enrolled = unit(rng, 6)
    with serve(on_postgres) as client:
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        for i in range(3):
            assert client.put(f"/v1/galleries/g/subjects/s{i}", json={"metadata": {"i": i}})
            response = client.post(
                f"/v1/galleries/g/subjects/s{i}/samples",
                json={"embeddings": enrolled[2 * i : 2 * i + 2].tolist()},
            )
            assert response.status_code == 201, response.text
        before = client.post("/v1/galleries/g/identify", json={"embeddings": enrolled.tolist()})
    assert before.status_code == 200
    assert [r["candidates"][0]["subject_id"] for r in before.json()["results"]] == [
        "s0",
        "s0",
        "s1",
        "s1",
        "s2",
        "s2",
    ]
    with serve(on_postgres) as client:  # a restart: the index is rebuilt from PostgreSQL
        after = client.post("/v1/galleries/g/identify", json={"embeddings": enrolled.tolist()})
        assert client.get("/v1/galleries/g/subjects/s1").json()["metadata"] == {"i": 1}
    assert after.json()["results"] == before.json()["results"]


@pytest.fixture
def admin(postgres_admin_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
        yield connection


def test_writes_answer_503_while_the_database_is_gone_and_resume_after(
    on_postgres: Settings,
    postgres_url: str,
    admin: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres_connection, "POOL_TIMEOUT_S", 1.0)  # wait 1 s, not 10
    database = postgres_url.rsplit("/", 1)[1]
    with serve(on_postgres) as client:
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        try:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            refused = client.put("/v1/galleries/g/subjects/a")
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["code"] == "database_unavailable"
            assert "retry later" in error["message"] and "127.0.0.1" not in error["message"]
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        # The pool reconnects by itself (after its back-off): no restart.
        for _ in range(30):
            response = client.put("/v1/galleries/g/subjects/a")
            if response.status_code != 503:
                break
        assert response.status_code == 201, response.text
        assert client.get("/v1/galleries/g").json()["subject_count"] == 1

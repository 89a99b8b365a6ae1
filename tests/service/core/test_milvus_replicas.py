"""Replicas sharing one Milvus: two apps on one database and one Milvus server (a real
`milvus-lite server`) keep one collection per gallery and model. The replica that commits a
write puts it in Milvus once; the other only learns of it from the change log. A start reuses
a collection that holds the database's samples, repairs one that does not, and two starting
at once do not both write it. Runs on SQLite and on PostgreSQL where the lock differs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.scoring import l2_normalise
from service.api.app import create_app
from service.index.milvus import SAMPLE, TEMPLATE, TEMPLATE_IDS, MilvusSubjectIndex
from service.settings import Settings
from service.storage import NewSample, open_store

from ..conftest import ADMIN_KEY, DIM, unit
from .conftest import caught_up, state


def settings_for(tmp_path: Path, name: str, bundle: Path, database: str, index: str) -> Settings:
    return Settings(
        data_dir=tmp_path / name,
        model=bundle,
        admin_key=ADMIN_KEY,
        database_url=database,
        index_url=index,
    )


def start(settings: Settings, stack: ExitStack) -> TestClient:
    client = stack.enter_context(TestClient(create_app(settings), raise_server_exceptions=False))
    client.headers["X-API-Key"] = ADMIN_KEY
    return client


@pytest.fixture
def replicas(
    database_url: str, milvus_url: str, tmp_path: Path, bundle_path: Path
) -> Iterator[tuple[TestClient, TestClient]]:
    with ExitStack() as stack:
        a, b = (
            start(settings_for(tmp_path, name, bundle_path, database_url, milvus_url), stack)
            for name in "ab"
        )
        yield a, b


def index_of(client: TestClient, gallery: str) -> MilvusSubjectIndex:
    held = state(client).live.find(gallery)
    assert held is not None
    index = held.active.index
    assert isinstance(index, MilvusSubjectIndex)
    return index


def rows(index: MilvusSubjectIndex, kind: int) -> list[tuple[int, int]]:
    """(id, subject pk) of every row of one kind in the collection, by id."""
    found = index._client.query(
        index.collection, filter=f"kind == {kind}", output_fields=["subject_pk"], limit=16384
    )
    return sorted((int(row["id"]), int(row["subject_pk"])) for row in found)


def count(index: MilvusSubjectIndex, kind: int) -> int:
    found = index._client.query(
        index.collection, filter=f"kind == {kind}", output_fields=["count(*)"]
    )
    return int(found[0]["count(*)"])


def in_database(client: TestClient, gallery: str) -> list[tuple[int, int]]:
    store = state(client).store
    record = store.get_gallery(gallery)
    assert record is not None
    stored = store.load_embeddings(gallery, record.model_id)
    return sorted(zip(stored.sample_ids.tolist(), stored.subject_pks.tolist(), strict=True))


def templates_expected(client: TestClient, gallery: str) -> dict[int, np.ndarray]:
    """Each subject's template as the database's samples make it: their normalised sum."""
    store = state(client).store
    record = store.get_gallery(gallery)
    assert record is not None
    stored = store.load_embeddings(gallery, record.model_id)
    vectors = stored.vectors.reshape(-1, DIM)
    return {
        int(pk): l2_normalise(vectors[stored.subject_pks == pk].sum(axis=0)[None, :], "t")[0]
        for pk in np.unique(stored.subject_pks)
    }


def templates_held(index: MilvusSubjectIndex) -> dict[int, np.ndarray]:
    found = index._client.query(
        index.collection, filter=f"kind == {TEMPLATE}", output_fields=["vector"], limit=16384
    )
    return {int(row["id"]) - TEMPLATE_IDS: np.asarray(row["vector"]) for row in found}


def enrol(client: TestClient, gallery: str, subject: str, vectors: np.ndarray) -> list[int]:
    response = client.post(
        f"/v1/galleries/{gallery}/subjects/{subject}/samples",
        json={"embeddings": vectors.tolist()},
    )
    assert response.status_code == 201, response.text
    return [sample["sample_id"] for sample in response.json()["samples"]]


def best(client: TestClient, gallery: str, probe: np.ndarray) -> str | None:
    response = client.post(
        f"/v1/galleries/{gallery}/identify", json={"embeddings": [probe.tolist()], "top_k": 1}
    )
    assert response.status_code == 200, response.text
    candidates = response.json()["results"][0]["candidates"]
    return candidates[0]["subject_id"] if candidates else None


def test_one_collection_written_once_by_the_replica_that_commits(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    rng = np.random.default_rng(3)
    for name, scoring in (("g", "max"), ("m", "mean")):
        assert a.post("/v1/galleries", json={"name": name, "scoring": scoring}).status_code == 201
    caught_up(a, b)
    # Whichever built a new gallery first made its empty collection; the other reused it.
    written_by_b = {name: index_of(b, name).rows_written for name in ("g", "m")}
    vectors = unit(rng, 9)
    for i in range(3):
        for name in ("g", "m"):
            assert a.put(f"/v1/galleries/{name}/subjects/s{i}").status_code == 201
            enrol(a, name, f"s{i}", vectors[3 * i : 3 * i + 3])
    caught_up(a, b)
    for name in ("g", "m"):
        on_a, on_b = index_of(a, name), index_of(b, name)
        assert on_a.collection == on_b.collection  # one collection for both replicas
        assert on_b.rows_written == written_by_b[name]  # B followed A's writes, wrote nothing
        assert best(b, name, vectors[4]) == "s1"
        # each sample once: the collection's rows are the database's
        assert rows(on_a, SAMPLE) == in_database(a, name) and count(on_a, SAMPLE) == 9
    # Writes through B reach the collection once; A follows without writing.
    written = index_of(a, "g").rows_written
    newcomer = unit(rng, 1)
    assert b.put("/v1/galleries/g/subjects/new").status_code == 201
    enrol(b, "g", "new", newcomer)
    sample = b.get("/v1/galleries/g/subjects/s0").json()["samples"][0]["sample_id"]
    assert b.delete(f"/v1/galleries/g/subjects/s0/samples/{sample}").status_code == 204
    assert b.delete("/v1/galleries/m/subjects/s2").status_code == 204
    caught_up(a, b)
    assert index_of(a, "g").rows_written == written
    assert best(a, "g", newcomer[0]) == "new"
    assert rows(index_of(a, "g"), SAMPLE) == in_database(a, "g")
    assert index_of(a, "g").sample_count == index_of(b, "g").sample_count == 9
    assert rows(index_of(a, "m"), SAMPLE) == in_database(a, "m")
    held, expected = templates_held(index_of(a, "m")), templates_expected(a, "m")
    assert sorted(held) == sorted(expected)  # s2's template went with it
    for pk, template in expected.items():
        np.testing.assert_allclose(held[pk], template, atol=1e-6)


def test_concurrent_enrolment_of_one_mean_subject_leaves_its_template_current(
    replicas: tuple[TestClient, TestClient],
) -> None:
    """Both replicas enrol into one "mean" subject at once (and one removes samples): the
    template ends as the normalised sum of the samples the database holds."""
    a, b = replicas
    rng = np.random.default_rng(5)
    assert a.post("/v1/galleries", json={"name": "m", "scoring": "mean"}).status_code == 201
    assert a.put("/v1/galleries/m/subjects/x").status_code == 201
    vectors = {"a": unit(rng, 12), "b": unit(rng, 12)}
    failures: list[str] = []

    def enrol_through(label: str, client: TestClient) -> None:
        try:
            for i, vector in enumerate(vectors[label]):
                ids = enrol(client, "m", "x", vector[None, :])
                if i % 4 == 3:  # every fourth is removed again
                    path = f"/v1/galleries/m/subjects/x/samples/{ids[0]}"
                    assert client.delete(path).status_code == 204
        except AssertionError as error:
            failures.append(f"{label}: {error}")

    threads = [threading.Thread(target=enrol_through, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    caught_up(a, b)
    index = index_of(a, "m")
    assert rows(index, SAMPLE) == in_database(a, "m") and count(index, SAMPLE) == 18
    expected = templates_expected(a, "m")
    held = templates_held(index)
    assert sorted(held) == sorted(expected) and len(expected) == 1
    for pk, template in expected.items():
        np.testing.assert_allclose(held[pk], template, atol=1e-6)
    probe = expected[next(iter(expected))]
    assert best(a, "m", probe) == best(b, "m", probe) == "x"


def test_a_restart_reuses_the_collection_and_a_database_that_moved_on_repairs_it(
    tmp_path: Path, bundle_path: Path, milvus_url: str
) -> None:
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    settings = settings_for(tmp_path, "a", bundle_path, database, milvus_url)
    rng = np.random.default_rng(8)
    vectors = unit(rng, 6)
    with ExitStack() as stack:
        a = start(settings, stack)
        assert a.post("/v1/galleries", json={"name": "m", "scoring": "mean"}).status_code == 201
        for i in range(3):
            assert a.put(f"/v1/galleries/m/subjects/s{i}").status_code == 201
            enrol(a, "m", f"s{i}", vectors[2 * i : 2 * i + 2])
        before = rows(index_of(a, "m"), SAMPLE)
    with ExitStack() as stack:  # a restart: nothing changed meanwhile
        a = start(settings, stack)
        index = index_of(a, "m")
        assert (index.opened, index.rows_written) == ("reused", 0)
        assert rows(index, SAMPLE) == before and index.sample_count == 6
        assert best(a, "m", vectors[2] + vectors[3]) == "s1"
    # The database moves on while no replica runs (as when a write committed and Milvus
    # refused it): a sample added, one removed.
    store = open_store(database)
    try:
        model_id = store.get_gallery("m").model_id  # type: ignore[union-attr]
        late = unit(rng, 1)[0].astype(np.float32)
        store.add_samples("m", "s2", model_id, [NewSample("f" * 64, "embedding", late, None)])
        store.delete_sample("m", "s0", before[0][0])
    finally:
        store.close()
    with ExitStack() as stack:
        a = start(settings, stack)
        index = index_of(a, "m")
        assert index.opened == "repaired"
        # the new sample, the two subjects' templates and sums, the digest of the samples
        assert index.rows_written == 1 + 2 + 2 + 1
        assert rows(index, SAMPLE) == in_database(a, "m")
        held, expected = templates_held(index), templates_expected(a, "m")
        assert sorted(held) == sorted(expected)
        for pk, template in expected.items():
            np.testing.assert_allclose(held[pk], template, atol=1e-6)


def test_two_replicas_starting_at_once_write_the_collection_once(
    tmp_path: Path, bundle_path: Path, milvus_url: str, postgres_url: str
) -> None:
    rng = np.random.default_rng(9)
    vectors = unit(rng, 20)
    with ExitStack() as stack:  # a gallery on FAISS: no collection in Milvus yet
        on_faiss = start(
            Settings(
                data_dir=tmp_path / "f",
                model=bundle_path,
                admin_key=ADMIN_KEY,
                database_url=postgres_url,
            ),
            stack,
        )
        assert on_faiss.post("/v1/galleries", json={"name": "g"}).status_code == 201
        for i in range(4):
            assert on_faiss.put(f"/v1/galleries/g/subjects/s{i}").status_code == 201
            enrol(on_faiss, "g", f"s{i}", vectors[5 * i : 5 * i + 5])
    with ExitStack() as stack:
        clients = {
            name: TestClient(
                create_app(settings_for(tmp_path, name, bundle_path, postgres_url, milvus_url))
            )
            for name in "ab"
        }
        for client in clients.values():
            stack.push(client.__exit__)
        threads = [threading.Thread(target=client.__enter__) for client in clients.values()]
        for thread in threads:  # both start (and build the gallery's index) at once
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        indexes = [index_of(clients[name], "g") for name in "ab"]
        assert sorted(index.opened for index in indexes) == ["created", "reused"]
        assert sum(index.rows_written for index in indexes) == 20 + 1  # and the digest
        assert rows(indexes[0], SAMPLE) == in_database(clients["a"], "g")

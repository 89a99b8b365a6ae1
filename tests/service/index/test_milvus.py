"""What only the Milvus backend has: a server to reach (one clear line when it cannot), a
collection per gallery and model, a configurable index type, Milvus's `limit` cap, and the
same answers as FAISS when the service runs on it (the shared behaviour is tested in
test_subject_search.py on both backends)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle
from models.scoring import decide
from models.testing import make_random_bundle
from service import cli
from service.api.app import create_app
from service.index import IndexConfigError, IndexContents, IndexUnavailable, open_index
from service.index import milvus as milvus_module
from service.index.milvus import (
    SUM_IDS,
    TEMPLATE_IDS,
    MilvusBackend,
    MilvusConfig,
    MilvusSubjectIndex,
)
from service.settings import Settings
from service.storage import open_store
from service.testing import free_port
from service.testing_engines import MilvusServer

from ..redeploy import (
    distinguishing_probes,
    enrol_images,
    enrolled_images,
    identify_images,
    wait_job,
)

DIM = 8
SECRET = "s3cr3t-pw"
ADMIN_KEY = "test-admin-key-0123456789"  # tests/service/conftest.py's


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def contents(rng: np.random.Generator, subjects: np.ndarray) -> IndexContents:
    return IndexContents(
        np.arange(1, len(subjects) + 1, dtype=np.int64),
        subjects.astype(np.int64),
        unit(rng, len(subjects)),
        {int(pk): f"s{pk}" for pk in np.unique(subjects)},
    )


@pytest.fixture
def backend(milvus_url: str) -> Iterator[MilvusBackend]:
    opened = open_index(milvus_url)
    assert isinstance(opened, MilvusBackend) and opened.name == "milvus"
    yield opened
    opened.close()


def test_an_unreachable_server_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: object
) -> None:
    port = free_port()  # nothing listens there
    url = f"milvus://admin:{SECRET}@127.0.0.1:{port}"
    with pytest.raises(IndexUnavailable) as raised:
        open_index(url)
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message
    assert message.startswith(f"cannot reach Milvus at milvus://127.0.0.1:{port}:")
    monkeypatch.setenv("OPENGALLERY_INDEX_URL", url)
    monkeypatch.setenv("OPENGALLERY_DATA_DIR", str(tmp_path))
    assert cli.serve_main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach Milvus at milvus://127.0.0.1:{port}" in err
    assert SECRET not in err


def test_a_server_that_never_answers_is_refused_at_start_after_the_urls_timeout() -> None:
    """A frozen server (connections accepted, never answered): one line after ?timeout=,
    not after pymilvus's minute of retries."""
    outcome: dict[str, BaseException | None] = {}

    def start() -> None:
        try:
            open_index(url)
            outcome["error"] = None
        except IndexUnavailable as error:
            outcome["error"] = error

    with MilvusServer() as server:
        assert server.process is not None
        url = server.url.replace("milvus://", f"milvus://root:{SECRET}@") + "?timeout=2"
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            opening = threading.Thread(target=start, daemon=True)
            opening.start()
            opening.join(timeout=30)  # far above 2 s, far below a minute
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    assert not opening.is_alive(), "still waiting for a server that does not answer"
    message = str(outcome["error"])
    assert message.startswith(f"cannot reach Milvus at milvus://127.0.0.1:{server.port}:")
    assert "\n" not in message and SECRET not in message


@pytest.mark.parametrize(
    "url",
    ["milvus://", "milvus:///path", "milvus://host:19530?prefix=9bad", "milvus://h?prefix=a-b"],
)
def test_urls_that_name_no_server_or_a_bad_prefix_are_refused(url: str) -> None:
    with pytest.raises(IndexConfigError):
        open_index(url)


def test_a_collection_per_gallery_and_model_rebuilt_from_the_database(
    backend: MilvusBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Milvus's query window is 16384 rows: a window of 4 pages these few rows the same way.
    monkeypatch.setattr(milvus_module, "MAX_LIMIT", 4)
    rng = np.random.default_rng(0)
    client = backend.connection.client
    first = backend.build(DIM, "max", contents(rng, np.arange(6) % 3), gallery="g", model_id="m@1")
    other_model = backend.build(
        DIM, "max", contents(rng, np.arange(4)), gallery="g", model_id="m@2"
    )
    other_gallery = backend.build(
        DIM, "mean", contents(rng, np.arange(5)), gallery="h", model_id="m@1"
    )
    names = {first.collection, other_model.collection, other_gallery.collection}
    assert len(names) == 3 and names <= set(client.list_collections())
    assert client.get_collection_stats(first.collection)["row_count"] == 6 + 1  # and the digest row
    assert (
        client.get_collection_stats(other_gallery.collection)["row_count"] == 5 + 5 + 5 + 1
    )  # templates, sums, digest
    assert first.opened == "created" and first.rows_written == 6 + 1  # and the digest row
    # Built again from what the database holds now (a restart after it moved on): the same
    # collection, its rows made equal to the database's, nothing left over.
    moved_on = contents(rng, np.arange(2))
    again = backend.build(DIM, "max", moved_on, gallery="g", model_id="m@1")
    assert again.collection == first.collection
    assert (again.opened, again.sample_count) == ("repaired", 2)
    rows = client.query(again.collection, filter="kind == 0", output_fields=["subject_pk"])
    assert sorted((r["id"], r["subject_pk"]) for r in rows) == [(1, 0), (2, 1)]
    # and once more from the same contents: reused, not a row written
    reused = backend.build(DIM, "max", moved_on, gallery="g", model_id="m@1")
    assert (reused.opened, reused.rows_written) == ("reused", 0)
    query = unit(rng, 1)
    assert reused.search(query, 2) == again.search(query, 2)
    again.drop()
    assert again.collection not in client.list_collections()


def test_the_index_type_is_chosen_in_the_url(milvus_url: str) -> None:
    backend = open_index(f"{milvus_url}&index=IVF_FLAT&nlist=4&nprobe=4")
    assert isinstance(backend, MilvusBackend)
    try:
        rng = np.random.default_rng(5)
        subjects = np.arange(200) % 50
        built = contents(rng, subjects)
        index = backend.build(DIM, "max", built, gallery="g", model_id="m@1")
        client = backend.connection.client
        described = client.describe_index(
            index.collection, client.list_indexes(index.collection)[0]
        )
        assert (described["index_type"], described["metric_type"]) == ("IVF_FLAT", "IP")
        # nprobe = nlist visits every cluster: still exact.
        queries = unit(rng, 3)
        for query, row in zip(queries, index.search(queries, 5), strict=True):
            scores = built.vectors @ query
            best = {pk: float(scores[subjects == pk].max()) for pk in range(50)}
            expected = sorted(best.items(), key=lambda item: -item[1])[:5]
            assert [c.subject_id for c in row] == [f"s{pk}" for pk, _ in expected]
    finally:
        backend.close()


def test_past_milvus_largest_limit_it_groups_by_subject(
    backend: MilvusBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(milvus_module, "MAX_LIMIT", 8)  # Milvus's is 16384: the same path
    rng = np.random.default_rng(6)
    crowd = unit(rng, 1) + 0.01 * unit(rng, 30)  # one subject's 30 samples crowd the top
    others = unit(rng, 10)
    vectors = np.vstack([crowd / np.linalg.norm(crowd, axis=1, keepdims=True), others])
    subjects = np.array([0] * 30 + list(range(1, 11)))
    built = IndexContents(
        np.arange(1, 41, dtype=np.int64),
        subjects.astype(np.int64),
        vectors.astype(np.float32),
        {pk: f"s{pk}" for pk in range(11)},
    )
    index = backend.build(DIM, "max", built)
    query = crowd[:1] / np.linalg.norm(crowd[:1])
    scores = vectors @ query[0]
    best = {pk: float(scores[subjects == pk].max()) for pk in range(11)}
    expected = sorted(best.items(), key=lambda item: -item[1])[:5]
    row = index.search(query.astype(np.float32), 5)[0]
    assert [c.subject_id for c in row] == [f"s{pk}" for pk, _ in expected]
    np.testing.assert_allclose([c.score for c in row], [s for _, s in expected], atol=1e-5)


def test_a_server_lost_while_serving_is_index_unavailable() -> None:
    with MilvusServer() as server:
        url = server.url.replace("milvus://", f"milvus://root:{SECRET}@")
        backend = open_index(url)
        index = backend.build(DIM, "max", contents(np.random.default_rng(1), np.arange(3)))
        server.stop()
        with pytest.raises(IndexUnavailable) as raised:
            index.search(unit(np.random.default_rng(2), 1), 2)
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message
    assert message.startswith(f"Milvus at milvus://127.0.0.1:{server.port} failed")


def identify_all(client: TestClient, gallery: str, probes: np.ndarray) -> list[dict]:
    response = client.post(
        f"/v1/galleries/{gallery}/identify", json={"embeddings": probes.tolist(), "top_k": 5}
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def enrol(client: TestClient, gallery: str, subject: str, vectors: np.ndarray) -> None:
    assert client.put(f"/v1/galleries/{gallery}/subjects/{subject}").status_code in (200, 201)
    response = client.post(
        f"/v1/galleries/{gallery}/subjects/{subject}/samples",
        json={"embeddings": vectors.tolist()},
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_same_gallery_on_faiss_and_on_milvus_answers_alike(
    settings: Settings, milvus_url: str, database: str, request: pytest.FixtureRequest
) -> None:
    if database == "postgresql":  # one database, as replicas share it
        settings = settings.model_copy(
            update={"database_url": request.getfixturevalue("postgres_url")}
        )
    rng = np.random.default_rng(11)
    dim = 16  # the test bundle's (tests/service/conftest.py)
    probes = {scoring: unit(rng, 12, dim) for scoring in ("max", "mean")}
    answers: dict[str, dict[str, list[dict]]] = {}
    with TestClient(create_app(settings)) as faiss_client:
        faiss_client.headers["X-API-Key"] = ADMIN_KEY
        for scoring in ("max", "mean"):
            created = faiss_client.post("/v1/galleries", json={"name": scoring, "scoring": scoring})
            assert created.status_code == 201
            for i in range(40):
                vectors = unit(rng, 1 + i % 4, dim)
                enrol(faiss_client, scoring, f"s{i:02d}", vectors)
                if i in (0, 4, 8):  # a probe equal to a one-sample subject: "known"
                    probes[scoring][i // 4] = vectors[0]
                if i in (12, 16):  # and near one: a score between the two
                    probes[scoring][i // 4] = vectors[0] + 0.3 * unit(rng, 1, dim)[0]
            assert faiss_client.delete(f"/v1/galleries/{scoring}/subjects/s03").status_code == 204
        answers["faiss"] = {s: identify_all(faiss_client, s, probes[s]) for s in ("max", "mean")}
    # The same database served by a second service whose index is in Milvus.
    on_milvus = settings.model_copy(update={"index_url": milvus_url})
    with TestClient(create_app(on_milvus)) as milvus_client:
        milvus_client.headers["X-API-Key"] = ADMIN_KEY
        answers["milvus"] = {s: identify_all(milvus_client, s, probes[s]) for s in ("max", "mean")}
        # and it follows changes: a new subject is found at once
        newcomer = unit(rng, 1, dim)
        enrol(milvus_client, "max", "newcomer", newcomer)
        assert identify_all(milvus_client, "max", newcomer)[0]["subject_id"] == "newcomer"
    for scoring in ("max", "mean"):
        for on_faiss, on_milvus_ in zip(
            answers["faiss"][scoring], answers["milvus"][scoring], strict=True
        ):
            assert [c["subject_id"] for c in on_milvus_["candidates"]] == [
                c["subject_id"] for c in on_faiss["candidates"]
            ]
            np.testing.assert_allclose(
                [c["score"] for c in on_milvus_["candidates"]],
                [c["score"] for c in on_faiss["candidates"]],
                atol=1e-5,
            )
            np.testing.assert_allclose(on_milvus_["threshold"], on_faiss["threshold"], atol=1e-5)
            assert on_milvus_["decision"] == on_faiss["decision"]
            assert on_milvus_["subject_id"] == on_faiss["subject_id"]
            known = decide(on_faiss["score"], on_faiss["threshold"])
            assert on_faiss["decision"] == ("known" if known else "unknown")
        decisions = [answer["decision"] for answer in answers["milvus"][scoring]]
        assert {"known", "unknown"} <= set(decisions)  # both kinds of answer compared


def test_requests_answer_503_index_unavailable_while_milvus_is_down(settings: Settings) -> None:
    with MilvusServer() as server:
        on_milvus = settings.model_copy(update={"index_url": server.url})
        with TestClient(create_app(on_milvus), raise_server_exceptions=False) as client:
            client.headers["X-API-Key"] = ADMIN_KEY
            assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
            enrol(client, "g", "a", unit(np.random.default_rng(3), 2, 16))
            server.stop()
            response = client.post(
                "/v1/galleries/g/identify",
                json={"embeddings": unit(np.random.default_rng(4), 1, 16).tolist()},
            )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "index_unavailable" and "retry later" in error["message"]


def test_a_gallery_on_milvus_migrates_into_a_new_collection(
    settings: Settings, milvus_url: str, tmp_path: Path
) -> None:
    new_bundle = tmp_path / "random-2"
    make_random_bundle(new_bundle, seed=5, embedding_dim=16, version="2")
    old, new = load_bundle(settings.model), load_bundle(new_bundle)
    images = enrolled_images(8, 2)
    probes, old_expected, new_expected = distinguishing_probes(old, new, images, count=4)

    def tops(client: TestClient) -> list[str]:
        response = identify_images(client, "g", probes)
        assert response.status_code == 200, response.text
        return [r["candidates"][0]["subject_id"] for r in response.json()["results"]]

    with TestClient(create_app(settings.model_copy(update={"index_url": milvus_url}))) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        enrol_images(client, "g", images)
        assert tops(client) == old_expected
        assert client.post("/v1/models", json={"path": str(new_bundle)}).status_code == 201
        started = client.post("/v1/galleries/g/migrate", json={"model": "random@2"})
        assert started.status_code == 202, started.text
        assert wait_job(client, started.json()["job_id"])["status"] == "succeeded"
        assert tops(client) == new_expected
    config = MilvusConfig(milvus_url)
    backend = MilvusBackend(milvus_url)
    try:
        collections = set(backend.connection.client.list_collections())
    finally:
        backend.close()
    assert config.collection_name("g", "random@2") in collections


def test_two_writers_of_one_mean_subject_leave_its_template_current(
    milvus_url: str, tmp_path: Path
) -> None:
    """Two processes' indexes on one collection, one writer at a time under the database's
    mutex. The first writer is held between reading the subject's sum and writing its
    template, while the second adds a sample to the same subject: the second waits for the
    mutex, so the template written last holds both samples (without the mutex the first would
    write back a template of its sample alone)."""
    store = open_store(f"sqlite:///{tmp_path / 'shared.sqlite3'}")
    backends = [MilvusBackend(milvus_url) for _ in range(2)]
    try:
        for backend in backends:
            backend.coordinate(store.exclusive)
        empty = IndexContents(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), {7: "x"}
        )
        first, second = (
            backend.build(DIM, "mean", empty, gallery="g", model_id="m@1") for backend in backends
        )
        vectors = unit(np.random.default_rng(12), 2)
        read, second_done = threading.Event(), threading.Event()
        get = first._get

        def held_after_reading_the_sum(ids: list[int], fields: list[str]) -> dict:
            found = get(ids, fields)
            if ids == [SUM_IDS + 7]:
                read.set()
                second_done.wait(timeout=1.0)  # set at once only if the second was let in
            return found

        first._get = held_after_reading_the_sum  # type: ignore[method-assign]

        def write(index: MilvusSubjectIndex, sample_id: int, done: threading.Event) -> None:
            with index.writing():
                index.add_samples(7, "x", np.array([sample_id]), vectors[sample_id - 1 : sample_id])
            done.set()

        writer = threading.Thread(target=write, args=(first, 1, threading.Event()))
        writer.start()
        assert read.wait(timeout=30)
        other = threading.Thread(target=write, args=(second, 2, second_done))
        other.start()
        writer.join(timeout=30)
        other.join(timeout=30)
        held = first._fetch_vectors([TEMPLATE_IDS + 7])[0]
        expected = vectors.sum(axis=0) / np.linalg.norm(vectors.sum(axis=0))
        np.testing.assert_allclose(held, expected, atol=1e-6)
        # the first build's digest, then each writer's sample, template, sum and digest
        assert (first.rows_written, second.rows_written) == (1 + 4, 4)
    finally:
        for backend in backends:
            backend.close()
        store.close()

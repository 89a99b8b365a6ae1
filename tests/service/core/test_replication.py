"""Two replicas in one process (two apps on one database), each following the change log:
after the follower catches up, the other replica answers as the writer does (index, subjects,
thresholds, keys, model), its own writes are skipped rather than read back, and applying a
change again changes nothing. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings

from ..conftest import ADMIN_KEY, unit
from .conftest import caught_up, state


@pytest.fixture
def replicas(
    database_url: str, tmp_path: Path, bundle_path: Path
) -> Iterator[tuple[TestClient, TestClient]]:
    clients = []
    for name in "ab":
        settings = Settings(
            data_dir=tmp_path / name,
            model=bundle_path,
            admin_key=ADMIN_KEY,
            database_url=database_url,
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        client.headers["X-API-Key"] = ADMIN_KEY
        clients.append(client)
    yield clients[0], clients[1]
    for client in clients:
        client.__exit__(None, None, None)


def indexed(client: TestClient, gallery: str) -> tuple[int, int] | None:
    """(subjects, samples) the replica holds; None before it has built the gallery."""
    return state(client).live.sizes().get(gallery)


def identify(client: TestClient, gallery: str, probes: np.ndarray) -> dict:
    response = client.post(
        f"/v1/galleries/{gallery}/identify",
        json={"embeddings": probes.tolist(), "top_k": 3},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_other_replica_follows_every_write(replicas: tuple[TestClient, TestClient]) -> None:
    a, b = replicas
    rng = np.random.default_rng(7)
    assert a.post("/v1/galleries", json={"name": "g", "fpir": 0.1}).status_code == 201
    vectors = unit(rng, 12)
    for i in range(4):
        assert a.put(f"/v1/galleries/g/subjects/s{i}").status_code == 201
        response = a.post(
            f"/v1/galleries/g/subjects/s{i}/samples",
            json={"embeddings": vectors[3 * i : 3 * i + 3].tolist()},
        )
        assert response.status_code == 201
    bulk = a.post(
        "/v1/galleries/g/samples",
        json={
            "create_subjects": True,
            "items": [
                {"subject_id": f"t{i}", "embedding": unit(rng, 1)[0].tolist()} for i in range(5)
            ],
        },
    )
    assert bulk.status_code in (200, 201, 207), bulk.text
    assert a.put("/v1/galleries/g/subjects/empty").status_code == 201
    sample_id = a.get("/v1/galleries/g/subjects/s0").json()["samples"][0]["sample_id"]
    assert a.delete(f"/v1/galleries/g/subjects/s0/samples/{sample_id}").status_code == 204
    assert a.delete("/v1/galleries/g/subjects/s1").status_code == 204
    for _ in range(2):  # 100 probes: the gallery's own set answers from the second upload
        probes = a.post(
            "/v1/galleries/g/calibration/samples", json={"embeddings": unit(rng, 50).tolist()}
        )
        assert probes.status_code == 201, probes.text
    caught_up(a, b)
    record = state(a).store.get_gallery("g")
    assert record is not None
    expected = (record.subject_count, record.sample_count)
    assert expected == (4 + 5 + 1 - 1, 12 + 5 - 1 - 3)
    assert indexed(a, "g") == indexed(b, "g") == expected
    queries = unit(rng, 6)
    assert identify(b, "g", queries) == identify(a, "g", queries)
    calibration_a = a.get("/v1/galleries/g/calibration").json()
    assert calibration_a["source"] == "gallery"
    assert b.get("/v1/galleries/g/calibration").json() == calibration_a
    assert b.delete("/v1/galleries/g/calibration").status_code == 200
    caught_up(a, b)
    calibration_b = b.get("/v1/galleries/g/calibration").json()
    assert calibration_b["source"] == "bundle"
    assert a.get("/v1/galleries/g/calibration").json() == calibration_b


def change_log_behind(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("opengallery_change_log_behind "):
            return float(line.split()[1])
    raise AssertionError("no opengallery_change_log_behind in /metrics")


def test_metrics_say_how_far_a_replica_is_behind_the_change_log(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    follower = state(b).follower
    assert follower is not None
    follower.close()  # b applies only when told to, below
    caught_up(b)
    assert change_log_behind(b) == 0
    assert a.post("/v1/galleries", json={"name": "g", "fpir": 0.1}).status_code == 201
    for i in range(3):
        assert a.put(f"/v1/galleries/g/subjects/s{i}").status_code == 201
    pending = state(b).store.changes_after(follower.cursor)
    assert len(pending) == 4  # the gallery and three subjects
    # Sequence numbers may skip (PostgreSQL): the gauge bounds the pending changes from above.
    assert change_log_behind(b) >= len(pending)
    assert change_log_behind(b) == pending[-1].seq - follower.cursor
    caught_up(b)
    assert change_log_behind(b) == 0
    assert indexed(b, "g") == (3, 0)


def test_a_key_revoked_on_one_replica_is_refused_by_the_other(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    created = a.post("/v1/keys", json={"scope": "client"}).json()
    headers = {"X-API-Key": created["key"]}
    assert b.get("/v1/galleries", headers=headers).status_code == 200  # now cached by b
    assert a.delete(f"/v1/keys/{created['key_id']}").status_code == 204
    caught_up(b)
    refused = b.get("/v1/galleries", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_galleries_deleted_and_created_anew_elsewhere(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    rng = np.random.default_rng(3)
    a.post("/v1/galleries", json={"name": "g"})
    a.put("/v1/galleries/g/subjects/x")
    a.post("/v1/galleries/g/subjects/x/samples", json={"embeddings": unit(rng, 2).tolist()})
    caught_up(b)
    assert indexed(b, "g") == (1, 2)
    assert a.delete("/v1/galleries/g").status_code == 204
    a.post("/v1/galleries", json={"name": "g", "scoring": "mean"})
    a.put("/v1/galleries/g/subjects/y")
    caught_up(b)
    assert indexed(b, "g") == (1, 0)
    assert state(b).live.get("g").record.scoring == "mean"
    assert a.delete("/v1/galleries/g").status_code == 204
    caught_up(b)
    assert "g" not in state(b).live.sizes()
    # A gallery created elsewhere is served at once, before the follower meets it.
    a.post("/v1/galleries", json={"name": "fresh"})
    assert b.put("/v1/galleries/fresh/subjects/z").status_code == 201


def test_own_writes_are_not_read_back_and_applying_again_changes_nothing(
    replicas: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    rng = np.random.default_rng(5)
    a.post("/v1/galleries", json={"name": "g"})
    a.put("/v1/galleries/g/subjects/x")
    reads: list[int] = []
    store = state(a).store
    original = store.load_sample_embeddings

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "load_sample_embeddings", counted)
    a.post("/v1/galleries/g/subjects/x/samples", json={"embeddings": unit(rng, 3).tolist()})
    caught_up(a, b)
    assert reads == []  # a applied its own enrolment when it made it
    assert indexed(a, "g") == indexed(b, "g") == (1, 3)
    queries = unit(rng, 4)
    before = identify(b, "g", queries)
    follower = state(b).follower
    assert follower is not None
    for change in state(b).store.changes_after(0):  # the whole log once more
        follower.apply(change)
    assert indexed(b, "g") == (1, 3)
    assert identify(b, "g", queries) == before == identify(a, "g", queries)


def test_a_snapshot_saved_at_shutdown_holds_what_other_replicas_wrote(
    tmp_path: Path, bundle_path: Path
) -> None:
    """With index snapshots (sq8), a replica stopping saves its indexes keyed by the gallery's
    version: only once it has applied every change, so that its next start is not stale."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"

    def app(name: str) -> TestClient:
        settings = Settings(
            data_dir=tmp_path / name,
            model=bundle_path,
            admin_key=ADMIN_KEY,
            database_url=url,
            index_url="faiss://?storage=sq8",
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.headers["X-API-Key"] = ADMIN_KEY
        return client

    rng = np.random.default_rng(9)
    with app("a") as a:
        a.post("/v1/galleries", json={"name": "g"})
        a.put("/v1/galleries/g/subjects/x")
        a.post("/v1/galleries/g/subjects/x/samples", json={"embeddings": unit(rng, 2).tolist()})
        with app("b") as b:
            follower = state(b).follower
            assert follower is not None
            follower.close()  # b stops following: what a writes now reaches b only at its stop
            a.put("/v1/galleries/g/subjects/y")
            a.post("/v1/galleries/g/subjects/y/samples", json={"embeddings": unit(rng, 3).tolist()})
            assert indexed(b, "g") == (1, 2)
        with app("b") as b:  # started from the snapshot b saved
            assert indexed(b, "g") == indexed(a, "g") == (2, 5)


def test_runs_of_additions_to_one_gallery_are_applied_as_one() -> None:
    from service.core.replication import merged
    from service.storage import ChangeRecord

    changes = [
        ChangeRecord(1, "samples_added", "g", sample_ids=(1, 2)),
        ChangeRecord(2, "samples_added", "g", sample_ids=(3,)),
        ChangeRecord(3, "samples_added", "h", sample_ids=(4,)),
        ChangeRecord(5, "samples_removed", "h", 7, "x", (4,)),
        ChangeRecord(6, "samples_added", "h", sample_ids=(5,)),
        ChangeRecord(7, "samples_added", "h", sample_ids=(6, 8)),
    ]
    assert merged(changes) == [
        ChangeRecord(2, "samples_added", "g", sample_ids=(1, 2, 3)),
        ChangeRecord(3, "samples_added", "h", sample_ids=(4,)),
        ChangeRecord(5, "samples_removed", "h", 7, "x", (4,)),
        ChangeRecord(7, "samples_added", "h", sample_ids=(5, 6, 8)),
    ]


def test_a_follower_that_lost_the_database_catches_up_when_it_is_back(
    postgres_url: str, postgres_admin_url: str, tmp_path: Path, bundle_path: Path
) -> None:
    """Every connection to the database is cut (the followers' LISTEN connections too) and the
    database refuses new ones for a moment; what is written once it is back reaches the other
    replica through its own follower thread, which reconnects by itself."""
    import time

    import psycopg

    apps = []
    for name in "ab":
        settings = Settings(
            data_dir=tmp_path / name,
            model=bundle_path,
            admin_key=ADMIN_KEY,
            database_url=postgres_url,
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.headers["X-API-Key"] = ADMIN_KEY
        apps.append(client)
    database = postgres_url.rsplit("/", 1)[1]
    rng = np.random.default_rng(21)
    with apps[0] as a, apps[1] as b, psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        assert a.post("/v1/galleries", json={"name": "g"}).status_code == 201
        try:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 30
        while a.put("/v1/galleries/g/subjects/x").status_code == 503:  # a's pool reconnects
            assert time.monotonic() < deadline
            time.sleep(0.05)
        vectors = unit(rng, 2)
        enrolled = a.post(
            "/v1/galleries/g/subjects/x/samples", json={"embeddings": vectors.tolist()}
        )
        assert enrolled.status_code == 201
        while indexed(b, "g") != (1, 2):  # b's follower thread, not the test, catches up
            assert time.monotonic() < deadline, indexed(b, "g")
            time.sleep(0.01)
        assert identify(b, "g", vectors) == identify(a, "g", vectors)


def test_a_follower_behind_a_pruned_log_reloads_from_the_database(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    rng = np.random.default_rng(17)
    a.post("/v1/galleries", json={"name": "g"})
    for subject in ("x", "y"):
        a.put(f"/v1/galleries/g/subjects/{subject}")
        a.post(
            f"/v1/galleries/g/subjects/{subject}/samples",
            json={"embeddings": unit(rng, 2).tolist()},
        )
    key = a.post("/v1/keys", json={"scope": "client"}).json()
    assert b.get("/v1/galleries", headers={"X-API-Key": key["key"]}).status_code == 200
    caught_up(b)
    follower = state(b).follower
    assert follower is not None
    follower.close()  # b falls behind...
    a.delete("/v1/galleries/g/subjects/x")
    a.put("/v1/galleries/g/subjects/z")
    a.post("/v1/galleries/g/subjects/z/samples", json={"embeddings": unit(rng, 3).tolist()})
    a.delete(f"/v1/keys/{key['key_id']}")
    a.post("/v1/galleries", json={"name": "h"})
    store = state(a).store
    assert store.prune_changes(-60) > 0  # ...and what it missed is pruned (but the newest)
    assert store.changes_after(follower.cursor)[0].seq > follower.cursor + 1
    follower.catch_up()
    assert follower.cursor == store.last_change()
    assert indexed(b, "g") == indexed(a, "g") == (2, 5)
    assert indexed(b, "h") == (0, 0)
    queries = unit(rng, 4)
    assert identify(b, "g", queries) == identify(a, "g", queries)
    assert b.get("/v1/galleries", headers={"X-API-Key": key["key"]}).status_code == 401


def test_an_enrolment_embedded_by_the_model_a_gallery_left_elsewhere_is_embedded_again(
    replicas: tuple[TestClient, TestClient], tmp_path: Path
) -> None:
    """b has not met a's model switch yet when it enrols: the database refuses the old
    model's embedding, b switches at once and embeds the image again with the new model."""
    import base64

    from models.testing import make_random_bundle
    from service.testing import png_bytes

    a, b = replicas
    wider = tmp_path / "bundles" / "random-3"
    make_random_bundle(wider, seed=9, embedding_dim=24, version="3")
    assert a.post("/v1/models", json={"path": str(wider)}).status_code == 201
    a.post("/v1/galleries", json={"name": "g"})
    a.put("/v1/galleries/g/subjects/x")
    image = base64.b64encode(png_bytes(1)).decode()
    first = a.post("/v1/galleries/g/subjects/x/samples", json={"images": [image]}).json()
    caught_up(b)
    follower = state(b).follower
    assert follower is not None
    follower.close()  # b will not hear of the switch below by itself
    store = state(a).store  # a migration elsewhere, done to the database directly
    sample_id = first["samples"][0]["sample_id"]
    shadow = np.random.default_rng(1).standard_normal((1, 24)).astype(np.float32)
    store.put_embeddings("random@3", [sample_id], shadow / np.linalg.norm(shadow))
    store.switch_gallery_model("g", "random@1", "random@3", None)
    assert state(b).live.get("g").active.model.model_id == "random@1"
    second = b.post(
        "/v1/galleries/g/subjects/x/samples",
        json={"images": [base64.b64encode(png_bytes(2)).decode()]},
    )
    assert second.status_code == 201, second.text
    assert second.json()["model"] == "random@3"
    assert state(b).live.get("g").active.model.model_id == "random@3"
    samples = b.get("/v1/galleries/g/subjects/x").json()["samples"]
    assert [s["model"] for s in samples] == ["random@3", "random@3"]
    assert indexed(b, "g") == (1, 2)


class GatedBuilds:
    """An index backend that counts builds and holds the first one until released."""

    def __init__(self, backend: object) -> None:
        import threading

        self.backend = backend
        self.calls = 0
        self.first_entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)

    def build(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls == 1:
            self.first_entered.set()
            assert self.release.wait(timeout=30)
        return self.backend.build(*args, **kwargs)  # type: ignore[attr-defined]


def test_a_gallery_is_built_once_when_its_creator_and_the_follower_race(
    tmp_path: Path, bundle_path: Path
) -> None:
    """The request that created a gallery and the follower that read its creation must not
    both build its index: on Milvus both builds are one collection, dropped and made again
    under the other."""
    import threading

    settings = Settings(data_dir=tmp_path / "a", model=bundle_path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        live, follower = state(client).live, state(client).follower
        assert follower is not None
        model = state(client).models.get(state(client).models.default_model_id)
        record = state(client).store.create_gallery("g", model.model_id, 0.1, "max", False)
        gated = GatedBuilds(live.backend)
        live.backend = gated  # type: ignore[assignment]
        creator = threading.Thread(target=live.add, args=(record, model))
        creator.start()
        assert gated.first_entered.wait(timeout=30)
        # The creator is building: the gallery's build lock is taken.
        assert not live.building("g").acquire(blocking=False)
        reader = threading.Thread(target=follower.reconcile_gallery, args=("g",))
        reader.start()
        gated.release.set()
        creator.join(timeout=30)
        reader.join(timeout=30)
        assert gated.calls == 1
        assert live.find("g") is not None and live.find("g").record.created == record.created

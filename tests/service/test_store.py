"""The SQLite store: transactions, versions, embeddings per model, WAL mode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from service.storage import AlreadyExistsError, NewSample, NotFoundError
from service.storage.sqlite import SQLiteStore


def sample(vector: list[float]) -> NewSample:
    array = np.asarray(vector, dtype=np.float32)
    return NewSample(hashlib.sha256(array.tobytes()).hexdigest(), "embedding", array)


@pytest.fixture
def store(tmp_path: Path):
    opened = SQLiteStore(tmp_path / "db.sqlite3")
    yield opened
    opened.close()


def test_wal_mode_and_foreign_keys(store: SQLiteStore) -> None:
    connection = store._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_versions_and_embeddings_round_trip(store: SQLiteStore) -> None:
    record = store.create_gallery("g", "m@1", 0.01, "max", True)
    assert record.version == 0
    with pytest.raises(AlreadyExistsError):
        store.create_gallery("g", "m@1", 0.01, "max", True)
    subject, created, version = store.put_subject("g", "José", {"k": 1})
    assert created and version == 1
    _, added, version = store.add_samples("g", "José", "m@1", [sample([1, 0]), sample([0, 1])])
    assert version == 2 and all(item.created for item in added)
    # The same content again: no new row, no version bump.
    _, again, version = store.add_samples("g", "José", "m@1", [sample([1, 0])])
    assert version == 2 and again[0].sample_id == added[0].sample_id and not again[0].created
    version = store.bulk_enrol("g", "m@1", [("ana", sample([0.6, 0.8])), ("bo", sample([1, 1]))])
    assert version == 3
    loaded = store.load_embeddings("g", "m@1")
    assert loaded.version == 3
    expected = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 1]], dtype=np.float32)
    np.testing.assert_array_equal(loaded.vectors, expected)  # bit-exact float32
    names = [loaded.subjects[pk] for pk in loaded.subject_pks]
    assert names == ["José", "José", "ana", "bo"]
    assert store.load_embeddings("g", "other@2").vectors.shape[0] == 0  # one model at a time
    pk, removed, version = store.delete_subject("g", "José")
    assert pk == subject.pk and removed == [a.sample_id for a in added] and version == 4
    assert store.get_gallery("g").sample_count == 2
    with pytest.raises(NotFoundError):
        store.delete_sample("g", "ana", 12345)
    assert store.delete_gallery("g") and store.get_gallery("g") is None


def test_failed_transaction_changes_nothing(store: SQLiteStore) -> None:
    store.create_gallery("g", "m@1", 0.01, "max", True)
    store.put_subject("g", "a", None)
    bad = NewSample("x", "embedding", np.zeros(2, dtype=np.float32))
    broken = NewSample(None, "embedding", np.zeros(2, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - the NOT NULL constraint
        store.add_samples("g", "a", "m@1", [bad, broken])
    assert store.list_samples("g", "a") == []
    assert store.get_gallery("g").version == 1

"""`opengallery db copy`: a populated SQLite deployment, copied into PostgreSQL, reads back
record for record through the store protocols; a non-empty target is refused untouched."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest

from opengallery.cli import main
from service.storage import NewSample, Store, open_store

from .conftest import NEW, OLD

SECRET = "s3cr3t-pw"


def new_sample(rng: np.random.Generator, image: bytes | None) -> NewSample:
    vector = rng.standard_normal(8).astype(np.float32)
    content = image if image is not None else vector.tobytes()
    return NewSample(
        hashlib.sha256(content).hexdigest(), "image" if image else "embedding", vector, image
    )


def populate(store: Store) -> None:
    """Every kind of record, in every state the service leaves them in."""
    rng = np.random.default_rng(7)
    store.create_gallery("people", OLD, 0.01, "max", True)
    store.create_gallery("Zoo", OLD, 0.2, "mean", False)
    store.create_gallery("empty", NEW, 0.05, "max", True)
    store.put_subject("people", "José", {"name": "José", "tags": ["a", 1, None], "z": 1, "a": 2})
    store.put_subject("people", "ana", None)
    store.put_subject("people", "no-samples", {"k": {"nested": True}})
    store.add_samples("people", "José", OLD, [new_sample(rng, b"png-1"), new_sample(rng, None)])
    store.add_samples("people", "ana", OLD, [new_sample(rng, b"png-2" * 100)])
    store.bulk_enrol("Zoo", OLD, [(f"z{i}", new_sample(rng, None)) for i in range(20)])
    # A deleted sample (the highest id): its id must not be handed out again after the copy.
    store.put_subject("people", "gone", None)
    _, added, _ = store.add_samples("people", "gone", OLD, [new_sample(rng, b"gone")])
    store.delete_sample("people", "gone", added[0].sample_id)
    # A migration half done: some samples already hold a second model's embedding.
    first = store.list_samples("people", "José")[0].sample_id
    store.put_embeddings(NEW, [first], rng.standard_normal((1, 4)).astype(np.float32))
    job = store.create_job("job-running", "migrate", "people", OLD, NEW)
    store.update_job(job.job_id, total=3, done=1)
    store.create_job("job-failed", "migrate", "Zoo", OLD, NEW)
    store.update_job("job-failed", status="failed", error="no images kept", attempt=True)
    store.add_api_key("hash-admin", "admin", None)
    client = store.add_api_key("hash-client", "client", "ci runner")
    store.touch_api_key(client.key_id, "2026-11-30T12:00:00.000+00:00")
    store.add_calibration_samples(
        "people", OLD, [new_sample(rng, b"probe-1"), new_sample(rng, None)]
    )
    store.register_model(OLD, "/bundles/old")
    store.register_model(NEW, "/bundles/new")


def assert_same(source: Store, target: Store) -> None:
    galleries = source.list_galleries()
    assert target.list_galleries() == galleries and len(galleries) == 3
    for gallery in galleries:
        assert target.get_gallery(gallery.name) == gallery
        subjects = source.list_subjects(gallery.name, 10_000, None)
        assert target.list_subjects(gallery.name, 10_000, None) == subjects
        for subject in subjects:
            assert target.get_subject(gallery.name, subject.subject_id) == subject
            assert target.list_samples(gallery.name, subject.subject_id) == source.list_samples(
                gallery.name, subject.subject_id
            )
        for model in (OLD, NEW):
            want, got = (
                source.load_embeddings(gallery.name, model),
                target.load_embeddings(gallery.name, model),
            )
            assert got.version == want.version and got.subjects == want.subjects
            np.testing.assert_array_equal(got.sample_ids, want.sample_ids)
            np.testing.assert_array_equal(got.subject_pks, want.subject_pks)
            assert got.vectors.tobytes() == want.vectors.tobytes()  # bit-exact
            assert target.count_samples_missing_embedding(
                gallery.name, model
            ) == source.count_samples_missing_embedding(gallery.name, model)
        images = source.images_missing_embedding(gallery.name, "m@unknown", 0, 10_000)
        assert target.images_missing_embedding(gallery.name, "m@unknown", 0, 10_000) == images
        assert target.count_samples_without_image(
            gallery.name
        ) == source.count_samples_without_image(gallery.name)
    for gallery in galleries:
        assert target.count_calibration_samples(gallery.name) == source.count_calibration_samples(
            gallery.name
        )
        assert target.list_calibration_samples(
            gallery.name, 0, 1000
        ) == source.list_calibration_samples(gallery.name, 0, 1000)
        want, got = (
            source.load_calibration(gallery.name, OLD),
            target.load_calibration(gallery.name, OLD),
        )
        np.testing.assert_array_equal(got.sample_ids, want.sample_ids)
        assert got.vectors.tobytes() == want.vectors.tobytes()
    assert target.list_api_keys() == source.list_api_keys()
    for key_hash in ("hash-admin", "hash-client"):
        assert target.find_api_key(key_hash) == source.find_api_key(key_hash) is not None
    for scope in (None, "admin", "client"):
        assert target.count_api_keys(scope) == source.count_api_keys(scope)
    assert target.registered_models() == source.registered_models()
    # (jobs created in the same millisecond have no order between them: compared by id)
    by_id = sorted(source.list_jobs(), key=lambda job: job.job_id)
    assert sorted(target.list_jobs(), key=lambda job: job.job_id) == by_id and len(by_id) == 2


def test_copy_sqlite_to_postgres_keeps_every_record(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'og.sqlite3'}"
    source = open_store(sqlite_url)
    populate(source)
    target_url = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    assert main(["db", "copy", "--from", sqlite_url, "--to", target_url]) == 0
    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.strip().splitlines()[-1] == (
        "copied 3 galleries, 24 subjects, 23 samples, 24 embeddings, 2 calibration_samples,"
        " 2 calibration_embeddings, 2 api_keys, 2 models,"
        f" 2 jobs from {sqlite_url} to {postgres_url.replace('postgres@', '')}"
    )
    target = open_store(postgres_url)
    try:
        assert_same(source, target)
        # The copy goes on as the deployment would have: new ids after every id ever used.
        highest = max(
            s.sample_id
            for g in source.list_galleries()
            for subject in source.list_subjects(g.name, 10_000, None)
            for s in source.list_samples(g.name, subject.subject_id)
        )
        rng = np.random.default_rng(1)
        for store in (source, target):
            _, added, version = store.add_samples("people", "ana", OLD, [new_sample(rng, None)])
            assert added[0].sample_id == highest + 2  # highest + 1 was the deleted one
            assert version == source.get_gallery("people").version  # type: ignore[union-attr]
        assert target.put_subject("people", "new", None)[0].pk == (
            source.put_subject("people", "new", None)[0].pk
        )
        assert target.add_api_key("h3", "client", None).key_id == 3
    finally:
        target.close()
        source.close()


def test_copy_refuses_a_target_that_holds_anything(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'og.sqlite3'}"
    source = open_store(sqlite_url)
    populate(source)
    source.close()
    target = open_store(postgres_url)
    target.register_model("m@other", "/elsewhere")
    target.close()
    assert main(["db", "copy", "--from", sqlite_url, "--to", postgres_url]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not empty (1 models)" in err
    with psycopg.connect(postgres_url) as connection:
        counts = [
            connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("galleries", "subjects", "samples", "api_keys", "models", "jobs")
        ]
    assert counts == [0, 0, 0, 0, 1, 0]


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("postgresql://h/db", "postgresql://h/db2", "--from must be a SQLite database"),
        ("sqlite:///x.sqlite3", "sqlite:///y.sqlite3", "--to must be a postgresql:// URL"),
        ("sqlite:///missing.sqlite3", None, "no SQLite database at"),
    ],
)
def test_copy_refuses_what_it_cannot_copy_in_one_line(
    source: str,
    target: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    # A refused copy never needs the target: an unreachable one shows the argument checks.
    target = target or f"postgresql://u:{SECRET}@127.0.0.1:9/db"
    assert main(["db", "copy", "--from", source, "--to", target]) in {1, 2}
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and SECRET not in err
    assert not (tmp_path / "missing.sqlite3").exists()  # nothing created on the way


def test_copy_refuses_a_source_with_data_it_does_not_know(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture
) -> None:
    """A table or column a later release added would be left behind: refused, target empty."""
    sqlite_file = tmp_path / "og.sqlite3"
    source = open_store(f"sqlite:///{sqlite_file}")
    populate(source)
    source.close()
    with sqlite3.connect(sqlite_file) as connection:
        connection.execute("ALTER TABLE api_keys ADD COLUMN revoked TEXT")
        connection.execute("CREATE TABLE calibration_sets (id INTEGER PRIMARY KEY)")
    assert main(["db", "copy", "--from", f"sqlite:///{sqlite_file}", "--to", postgres_url]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "does not know (api_keys.revoked, calibration_sets)" in err
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT COUNT(*) FROM galleries").fetchone() == (0,)

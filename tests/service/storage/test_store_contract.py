"""The store contract: what every backend promises, run against each one (see conftest.py).

Results, errors, ordering, a version bump in the same transaction as every mutation of a
gallery, idempotent enrolment by content hash, the all-or-nothing model switch, many threads
writing at once, and durability of every acknowledged write across a SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from service.storage import (
    AlreadyExistsError,
    BulkAdded,
    LastAdminKeyError,
    NewSample,
    NotFoundError,
    Store,
    StoreConflict,
    StoredImage,
    open_store,
)

from .conftest import NEW, OLD, sample

REPO = Path(__file__).resolve().parents[3]


def version_of(store: Store, gallery: str = "g") -> int:
    record = store.get_gallery(gallery)
    assert record is not None
    return record.version


def assert_not_found(error: pytest.ExceptionInfo[NotFoundError], what: str, name: object) -> None:
    assert (error.value.what, error.value.name) == (what, name)


@pytest.fixture
def gallery(store: Store) -> str:
    store.create_gallery("g", OLD, 0.01, "max", True)
    return "g"


# -- galleries --


def test_create_get_list_delete_gallery(store: Store) -> None:
    record = store.create_gallery("zeta", OLD, 0.05, "mean", False)
    assert (record.name, record.model_id, record.fpir, record.scoring) == (
        "zeta",
        OLD,
        0.05,
        "mean",
    )
    assert record.keep_images is False and record.version == 0
    assert (record.subject_count, record.sample_count) == (0, 0) and record.created
    assert store.get_gallery("zeta") == record
    assert store.get_gallery("nope") is None
    store.create_gallery("alpha", NEW, 0.01, "max", True)
    store.create_gallery("Mid", OLD, 0.01, "max", True)
    assert [g.name for g in store.list_galleries()] == ["Mid", "alpha", "zeta"]  # by name
    assert store.delete_gallery("zeta") is True
    assert store.delete_gallery("zeta") is False
    assert store.get_gallery("zeta") is None
    assert [g.name for g in store.list_galleries()] == ["Mid", "alpha"]


def test_a_taken_gallery_name_is_refused_and_the_gallery_kept(store: Store) -> None:
    store.create_gallery("g", OLD, 0.01, "max", True)
    store.put_subject("g", "a", None)
    with pytest.raises(AlreadyExistsError):
        store.create_gallery("g", NEW, 0.5, "mean", False)
    record = store.get_gallery("g")
    assert record is not None and (record.model_id, record.version, record.subject_count) == (
        OLD,
        1,
        1,
    )


def test_gallery_counts_and_cascading_delete(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    store.put_subject(gallery, "b", None)
    store.add_samples(gallery, "a", OLD, [sample([1, 0]), sample([0, 1])])
    store.add_samples(gallery, "b", OLD, [sample([1, 1])])
    record = store.get_gallery(gallery)
    assert record is not None and (record.subject_count, record.sample_count) == (2, 3)
    assert [(g.subject_count, g.sample_count) for g in store.list_galleries()] == [(2, 3)]
    assert store.delete_gallery(gallery)
    store.create_gallery(gallery, OLD, 0.01, "max", True)  # same name: nothing left behind
    assert store.get_subject(gallery, "a") is None
    assert store.load_embeddings(gallery, OLD).sample_ids.size == 0
    assert store.count_samples_without_image(gallery) == (0, 0)


# -- subjects --


def test_put_subject_creates_then_updates(store: Store, gallery: str) -> None:
    created, was_created, version = store.put_subject(gallery, "José", None)
    assert was_created and version == 1
    assert (created.subject_id, created.metadata, created.sample_count) == ("José", {}, 0)
    updated, was_created, version = store.put_subject(gallery, "José", {"k": [1, "x"]})
    assert not was_created and version == 2
    assert updated.pk == created.pk and updated.metadata == {"k": [1, "x"]}
    assert updated.created == created.created
    kept, was_created, version = store.put_subject(gallery, "José", None)  # None keeps metadata
    assert not was_created and version == 3 and kept.metadata == {"k": [1, "x"]}
    assert store.get_subject(gallery, "José") == kept
    replaced, _, _ = store.put_subject(gallery, "José", {})
    assert replaced.metadata == {}


def test_subject_lookups_of_what_does_not_exist(store: Store, gallery: str) -> None:
    assert store.get_subject(gallery, "nobody") is None
    assert store.get_subject("nope", "nobody") is None
    with pytest.raises(NotFoundError) as error:
        store.put_subject("nope", "a", None)
    assert_not_found(error, "gallery", "nope")
    with pytest.raises(NotFoundError) as error:
        store.list_subjects("nope", 10, None)
    assert_not_found(error, "gallery", "nope")
    with pytest.raises(NotFoundError) as error:
        store.delete_subject(gallery, "nobody")
    assert_not_found(error, "subject", "nobody")
    with pytest.raises(NotFoundError) as error:
        store.delete_subject("nope", "nobody")
    assert_not_found(error, "gallery", "nope")
    assert version_of(store) == 0


def test_list_subjects_by_subject_id_with_an_after_cursor(store: Store, gallery: str) -> None:
    ids = ["b", "a", "José", "Zed", "a1", "10", "9", "ä", "_", "jose"]
    for subject_id in ids:
        store.put_subject(gallery, subject_id, {"id": subject_id})
    store.create_gallery("other", OLD, 0.01, "max", True)
    store.put_subject("other", "aa", None)
    expected = sorted(ids)  # code point order: "10" < "9" < "José" < "Zed" < "_" < "a" < "ä"
    assert [s.subject_id for s in store.list_subjects(gallery, 100, None)] == expected
    pages, after = [], None
    while page := store.list_subjects(gallery, 3, after):
        assert len(page) <= 3
        pages.append([s.subject_id for s in page])
        after = page[-1].subject_id
    assert [subject_id for page in pages for subject_id in page] == expected
    assert len(pages) == 4
    # The cursor need not be an existing id: strictly after it.
    assert [s.subject_id for s in store.list_subjects(gallery, 2, "Y")] == ["Zed", "_"]
    assert store.list_subjects(gallery, 5, "ä") == []
    assert all(s.metadata == {"id": s.subject_id} for s in store.list_subjects(gallery, 100, None))


def test_delete_subject_removes_its_samples(store: Store, gallery: str) -> None:
    subject, _, _ = store.put_subject(gallery, "a", None)
    store.put_subject(gallery, "b", None)
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0]), sample([0, 1])])
    store.add_samples(gallery, "b", OLD, [sample([1, 1])])
    before = version_of(store)
    pk, removed, version = store.delete_subject(gallery, "a")
    assert pk == subject.pk and removed == sorted(a.sample_id for a in added)
    assert version == before + 1 == version_of(store)
    assert store.get_subject(gallery, "a") is None
    loaded = store.load_embeddings(gallery, OLD)
    assert set(loaded.subjects.values()) == {"b"} and loaded.sample_ids.size == 1
    record = store.get_gallery(gallery)
    assert record is not None and (record.subject_count, record.sample_count) == (1, 1)


# -- samples --


def test_add_samples_is_idempotent_by_content_hash(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    store.put_subject(gallery, "b", None)
    first, second = sample([1, 0]), sample([0, 1])
    subject, added, version = store.add_samples(gallery, "a", OLD, [first, second])
    assert version == 3 and [a.created for a in added] == [True, True]
    assert added[0].sample_id < added[1].sample_id and subject.sample_count == 2
    # The same content again: the existing sample, no new row, no version bump.
    subject, again, version = store.add_samples(gallery, "a", OLD, [second, first])
    assert version == 3 and subject.sample_count == 2
    assert [(a.sample_id, a.created) for a in again] == [
        (added[1].sample_id, False),
        (added[0].sample_id, False),
    ]
    # One old and one new: one bump for the call; a repeat inside one call is added once.
    third = sample([0.6, 0.8])
    subject, mixed, version = store.add_samples(gallery, "a", OLD, [first, third, third])
    assert version == 4 and subject.sample_count == 3
    assert [a.created for a in mixed] == [False, True, False]
    assert mixed[1].sample_id == mixed[2].sample_id
    # The hash is per subject: another subject enrols the same content as its own sample.
    _, other, version = store.add_samples(gallery, "b", OLD, [first])
    assert other[0].created and other[0].sample_id not in {a.sample_id for a in added}
    assert version == 5
    # An empty call adds nothing and bumps nothing.
    _, none, version = store.add_samples(gallery, "b", OLD, [])
    assert none == [] and version == 5 == version_of(store)


def test_add_samples_to_what_does_not_exist(store: Store, gallery: str) -> None:
    with pytest.raises(NotFoundError) as error:
        store.add_samples(gallery, "nobody", OLD, [sample([1, 0])])
    assert_not_found(error, "subject", "nobody")
    with pytest.raises(NotFoundError) as error:
        store.add_samples("nope", "nobody", OLD, [sample([1, 0])])
    assert_not_found(error, "gallery", "nope")
    assert version_of(store) == 0 and store.count_samples_without_image(gallery) == (0, 0)


def test_a_failed_add_samples_changes_nothing(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    good = sample([1, 0])
    broken = NewSample(None, "embedding", np.zeros(2, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - the backend's own constraint error
        store.add_samples(gallery, "a", OLD, [good, broken])
    assert store.list_samples(gallery, "a") == []
    assert version_of(store) == 1
    _, added, _ = store.add_samples(gallery, "a", OLD, [good])  # and the store still works
    assert added[0].created


def test_list_samples_and_delete_sample(store: Store, gallery: str) -> None:
    subject, _, _ = store.put_subject(gallery, "a", None)
    store.put_subject(gallery, "b", None)
    image = b"\x89PNG-bytes"
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0], image), sample([0, 1])])
    _, other, _ = store.add_samples(gallery, "b", OLD, [sample([1, 1])])
    listed = store.list_samples(gallery, "a")
    assert [s.sample_id for s in listed] == [a.sample_id for a in added]  # by id
    with_image, without = listed
    assert (with_image.subject_id, with_image.model_id, with_image.source) == ("a", OLD, "image")
    assert with_image.has_image and not without.has_image and without.source == "embedding"
    assert with_image.content_sha256 == hashlib.sha256(image).hexdigest()
    assert without.content_sha256 == sample([0, 1]).content_sha256
    with pytest.raises(NotFoundError) as error:
        store.list_samples(gallery, "nobody")
    assert_not_found(error, "subject", "nobody")
    before = version_of(store)
    # A sample of another subject is not this subject's to delete.
    with pytest.raises(NotFoundError) as error:
        store.delete_sample(gallery, "a", other[0].sample_id)
    assert_not_found(error, "sample", other[0].sample_id)
    with pytest.raises(NotFoundError) as error:
        store.delete_sample(gallery, "a", 10**9)
    assert_not_found(error, "sample", 10**9)
    with pytest.raises(NotFoundError) as error:
        store.delete_sample(gallery, "nobody", added[0].sample_id)
    assert_not_found(error, "subject", "nobody")
    assert version_of(store) == before
    pk, version = store.delete_sample(gallery, "a", added[0].sample_id)
    assert pk == subject.pk and version == before + 1 == version_of(store)
    assert [s.sample_id for s in store.list_samples(gallery, "a")] == [added[1].sample_id]
    assert [s.sample_id for s in store.list_samples(gallery, "b")] == [other[0].sample_id]


def test_bulk_enrol_creates_subjects_and_skips_known_content(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", {"keep": True})
    _, first, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0])])
    items = [
        ("a", sample([1, 0])),  # already enrolled for a
        ("a", sample([0, 1])),
        ("new", sample([0.6, 0.8])),
        ("new", sample([0.6, 0.8])),  # twice in one call
        ("other", sample([1, 0])),
    ]
    result = store.bulk_enrol(gallery, OLD, items)
    assert result.version == 3 == version_of(store)
    assert [s.sample_count for s in store.list_subjects(gallery, 10, None)] == [2, 1, 1]
    assert store.get_subject(gallery, "a").metadata == {"keep": True}  # type: ignore[union-attr]
    assert store.get_subject(gallery, "new").metadata == {}  # type: ignore[union-attr]
    a, new, other = (store.get_subject(gallery, name) for name in ("a", "new", "other"))
    assert [item.created for item in result.items] == [False, True, True, False, True]
    assert [item.subject_pk for item in result.items] == [
        a.pk,  # type: ignore[union-attr]
        a.pk,  # type: ignore[union-attr]
        new.pk,  # type: ignore[union-attr]
        new.pk,  # type: ignore[union-attr]
        other.pk,  # type: ignore[union-attr]
    ]
    # A repeat names the sample that holds the content.
    assert result.items[0].sample_id == first[0].sample_id
    assert result.items[3].sample_id == result.items[2].sample_id
    listed = {
        s.sample_id for name in ("a", "new", "other") for s in store.list_samples(gallery, name)
    }
    assert {item.sample_id for item in result.items} == listed
    # Everything again: nothing added, the version stays.
    again = store.bulk_enrol(gallery, OLD, items)
    assert again.version == 3 and not any(item.created for item in again.items)
    assert [item.sample_id for item in again.items] == [item.sample_id for item in result.items]
    with pytest.raises(NotFoundError) as error:
        store.bulk_enrol("nope", OLD, items)
    assert_not_found(error, "gallery", "nope")


def test_bulk_enrol_without_creating_subjects_reports_the_missing(
    store: Store, gallery: str
) -> None:
    store.put_subject(gallery, "a", None)
    result = store.bulk_enrol(
        gallery, OLD, [("ghost", sample([1, 0])), ("a", sample([0, 1]))], create_subjects=False
    )
    assert result.items[0] == BulkAdded(None, None, created=False)
    assert result.items[1].created and result.version == version_of(store)
    assert store.get_subject(gallery, "ghost") is None
    nothing = store.bulk_enrol(gallery, OLD, [("ghost", sample([1, 1]))], create_subjects=False)
    assert nothing.version == result.version  # nothing added: no bump


def test_load_embeddings_is_exact_and_per_model(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "José", None)
    store.put_subject(gallery, "empty", None)
    vectors = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    store.add_samples(gallery, "José", OLD, [sample(list(v)) for v in vectors[:2]])
    store.bulk_enrol(
        gallery,
        OLD,
        [
            ("ana", sample(list(vectors[2]))),
            ("bo", sample(list(vectors[3]))),
            ("bo", sample(list(vectors[4]))),
        ],
    )
    loaded = store.load_embeddings(gallery, OLD)
    assert loaded.version == version_of(store)
    assert loaded.sample_ids.dtype == np.int64 and loaded.subject_pks.dtype == np.int64
    assert list(loaded.sample_ids) == sorted(loaded.sample_ids)  # by sample id
    assert loaded.vectors.dtype == np.float32
    np.testing.assert_array_equal(loaded.vectors, vectors)  # bit-exact float32
    assert [loaded.subjects[pk] for pk in loaded.subject_pks] == ["José", "José", "ana", "bo", "bo"]
    assert set(loaded.subjects.values()) == {"José", "empty", "ana", "bo"}  # all subjects
    other = store.load_embeddings(gallery, NEW)  # one model at a time
    assert other.sample_ids.size == 0 and other.vectors.shape[0] == 0
    assert other.version == loaded.version and other.subjects == loaded.subjects
    with pytest.raises(NotFoundError) as error:
        store.load_embeddings("nope", OLD)
    assert_not_found(error, "gallery", "nope")


# -- versions --


def test_every_mutation_of_a_gallery_bumps_its_version_once(store: Store, gallery: str) -> None:
    """Each returned version is the stored one, one more than before; reads and shadow
    embeddings of another model (not what the gallery is searched with) leave it alone."""
    store.create_gallery("other", OLD, 0.01, "max", True)
    expected = 0

    def bumped(returned: int | None = None) -> None:
        nonlocal expected
        expected += 1
        assert version_of(store) == expected
        if returned is not None:
            assert returned == expected
        assert version_of(store, "other") == 0

    def unchanged() -> None:
        assert version_of(store) == expected

    bumped(store.put_subject(gallery, "a", None)[2])
    bumped(store.put_subject(gallery, "a", {"m": 1})[2])
    bumped(store.put_subject(gallery, "a", None)[2])
    bumped(store.add_samples(gallery, "a", OLD, [sample([1, 0], b"i1"), sample([0, 1], b"i2")])[2])
    store.add_samples(gallery, "a", OLD, [sample([1, 0], b"i1")])
    unchanged()
    store.get_subject(gallery, "a"), store.list_subjects(gallery, 10, None)
    store.list_samples(gallery, "a"), store.load_embeddings(gallery, OLD)
    unchanged()
    bumped(store.bulk_enrol(gallery, OLD, [("b", sample([1, 1], b"i3"))]).version)
    sample_id = store.list_samples(gallery, "b")[0].sample_id
    bumped(store.delete_sample(gallery, "b", sample_id)[1])
    missing = store.images_missing_embedding(gallery, NEW, 0, 100)
    store.put_embeddings(NEW, [m.sample_id for m in missing], np.eye(2, dtype=np.float32))
    unchanged()
    bumped(store.switch_gallery_model(gallery, OLD, NEW, None))
    store.drop_embeddings(gallery, OLD)
    unchanged()
    bumped(store.delete_subject(gallery, "a")[2])


# -- model migrations --


def test_migration_reads_images_by_id_missing_a_model(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    images = [f"image-{i}".encode() for i in range(5)]
    _, added, _ = store.add_samples(
        gallery, "a", OLD, [sample([i, 1], image) for i, image in enumerate(images)]
    )
    _, bare, _ = store.add_samples(gallery, "a", OLD, [sample([9, 9])])  # no image kept
    ids = [a.sample_id for a in added] + [bare[0].sample_id]
    assert store.count_samples_without_image(gallery) == (6, 1)
    assert store.count_samples_missing_embedding(gallery, OLD) == 0
    assert store.count_samples_missing_embedding(gallery, NEW) == 6
    assert store.images_missing_embedding(gallery, NEW, 0, 100) == [
        StoredImage(sample_id, image) for sample_id, image in zip(ids, [*images, None], strict=True)
    ]
    page = store.images_missing_embedding(gallery, NEW, ids[1], 2)  # strictly after, by id
    assert [p.sample_id for p in page] == ids[2:4]
    store.put_embeddings(NEW, [ids[0], ids[2]], np.ones((2, 2), dtype=np.float32))
    assert store.count_samples_missing_embedding(gallery, NEW) == 4
    assert [p.sample_id for p in store.images_missing_embedding(gallery, NEW, 0, 100)] == [
        ids[1],
        *ids[3:],
    ]
    assert store.images_missing_embedding(gallery, OLD, 0, 100) == []
    with pytest.raises(NotFoundError):
        store.count_samples_without_image("nope")
    with pytest.raises(NotFoundError):
        store.count_samples_missing_embedding("nope", NEW)
    with pytest.raises(NotFoundError):
        store.images_missing_embedding("nope", NEW, 0, 10)


def test_put_embeddings_replaces_and_skips_deleted_samples(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0]), sample([0, 1])])
    first, second = (a.sample_id for a in added)
    store.put_embeddings(NEW, [first, second], np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    store.put_embeddings(NEW, [second], np.array([[7, 8, 9]], np.float32))  # replaces
    store.delete_sample(gallery, "a", first)
    store.put_embeddings(NEW, [first], np.array([[0, 0, 1]], np.float32))  # deleted: skipped
    loaded = store.load_embeddings(gallery, NEW)
    assert list(loaded.sample_ids) == [second]
    np.testing.assert_array_equal(loaded.vectors, [[7, 8, 9]])
    np.testing.assert_array_equal(store.load_embeddings(gallery, OLD).vectors, [[0, 1]])


def test_drop_embeddings_drops_one_model_of_one_gallery(store: Store, gallery: str) -> None:
    store.create_gallery("other", OLD, 0.01, "max", True)
    ids = {}
    for name in (gallery, "other"):
        store.put_subject(name, "a", None)
        _, added, _ = store.add_samples(name, "a", OLD, [sample([1, 0])])
        ids[name] = added[0].sample_id
        store.put_embeddings(NEW, [ids[name]], np.array([[0, 1]], np.float32))
    store.drop_embeddings(gallery, NEW)
    assert store.load_embeddings(gallery, NEW).sample_ids.size == 0
    assert list(store.load_embeddings(gallery, OLD).sample_ids) == [ids[gallery]]
    assert list(store.load_embeddings("other", NEW).sample_ids) == [ids["other"]]
    with pytest.raises(NotFoundError):
        store.drop_embeddings("nope", NEW)


def test_switch_gallery_model_is_all_or_nothing(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0]), sample([0, 1])])
    first, second = (a.sample_id for a in added)
    job = store.create_job("job-1", "migrate", gallery, OLD, NEW)
    store.update_job(job.job_id, total=2, done=1)
    store.put_embeddings(NEW, [first], np.array([[0.6, 0.8]], np.float32))
    before = version_of(store)

    def unchanged() -> None:
        record = store.get_gallery(gallery)
        assert record is not None and (record.model_id, record.version) == (OLD, before)
        assert [s.model_id for s in store.list_samples(gallery, "a")] == [OLD, OLD]
        assert list(store.load_embeddings(gallery, OLD).sample_ids) == [first, second]
        assert list(store.load_embeddings(gallery, NEW).sample_ids) == [first]
        current = store.get_job(job.job_id)
        assert current is not None and (current.status, current.done) == ("running", 1)

    with pytest.raises(StoreConflict):  # one sample has no NEW embedding yet
        store.switch_gallery_model(gallery, OLD, NEW, job.job_id)
    unchanged()
    with pytest.raises(StoreConflict):  # the gallery is not on the source model
        store.switch_gallery_model(gallery, NEW, OLD, job.job_id)
    unchanged()
    with pytest.raises(NotFoundError) as error:
        store.switch_gallery_model("nope", OLD, NEW, job.job_id)
    assert_not_found(error, "gallery", "nope")
    unchanged()

    store.put_embeddings(NEW, [second], np.array([[0.8, 0.6]], np.float32))
    version = store.switch_gallery_model(gallery, OLD, NEW, job.job_id)
    assert version == before + 1 == version_of(store)
    record = store.get_gallery(gallery)
    assert record is not None and record.model_id == NEW
    assert [s.model_id for s in store.list_samples(gallery, "a")] == [NEW, NEW]
    assert store.load_embeddings(gallery, OLD).sample_ids.size == 0  # the old ones dropped
    np.testing.assert_array_equal(
        store.load_embeddings(gallery, NEW).vectors, np.array([[0.6, 0.8], [0.8, 0.6]], np.float32)
    )
    done = store.get_job(job.job_id)
    assert done is not None and (done.status, done.done, done.total) == ("succeeded", 2, 2)


# -- a gallery's own calibration set --


def test_calibration_samples_are_idempotent_by_content_and_bump_the_version(
    store: Store, gallery: str
) -> None:
    before = version_of(store)
    vectors = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    added, size = store.add_calibration_samples(
        gallery, OLD, [sample(list(vectors[0]), image=b"png-0"), sample(list(vectors[1]))]
    )
    assert [a.created for a in added] == [True, True] and size == 2
    assert version_of(store) == before + 1
    again, size = store.add_calibration_samples(
        gallery, OLD, [sample(list(vectors[1])), sample(list(vectors[2]))]
    )
    assert [a.created for a in again] == [False, True] and size == 3
    assert again[0].sample_id == added[1].sample_id  # the stored probe, not a new one
    assert version_of(store) == before + 2
    _, size = store.add_calibration_samples(gallery, OLD, [sample([9.0], image=b"png-0")])
    assert size == 3 and version_of(store) == before + 2  # nothing new: no bump
    assert store.count_calibration_samples(gallery) == (3, 2)  # two without an image
    listed = store.list_calibration_samples(gallery, 0, 10)
    assert [r.sample_id for r in listed] == [
        added[0].sample_id,
        added[1].sample_id,
        again[1].sample_id,
    ]
    assert [(r.source, r.has_image) for r in listed] == [
        ("image", True),
        ("embedding", False),
        ("embedding", False),
    ]
    assert listed[1].content_sha256 == sample(list(vectors[1])).content_sha256 and listed[0].created
    assert store.list_calibration_samples(gallery, listed[0].sample_id, 1) == listed[1:2]
    loaded = store.load_calibration(gallery, OLD)
    assert loaded.sample_ids.dtype == np.int64 and list(loaded.sample_ids) == sorted(
        loaded.sample_ids
    )
    np.testing.assert_array_equal(loaded.vectors, vectors)  # bit-exact, by id
    assert store.load_calibration(gallery, NEW).vectors.shape[0] == 0
    # Samples of the gallery and its calibration probes are separate: same content, no clash.
    store.put_subject(gallery, "a", None)
    _, enrolled, _ = store.add_samples(gallery, "a", OLD, [sample(list(vectors[0]))])
    assert enrolled[0].created
    assert store.get_gallery(gallery).sample_count == 1  # type: ignore[union-attr]


def test_clear_calibration_and_unknown_galleries(store: Store, gallery: str) -> None:
    store.create_gallery("other", OLD, 0.01, "max", True)
    for name in (gallery, "other"):
        store.add_calibration_samples(name, OLD, [sample([1, 0]), sample([0, 1])])
    before = version_of(store)
    assert store.clear_calibration(gallery) == 2 and version_of(store) == before + 1
    assert store.clear_calibration(gallery) == 0 and version_of(store) == before + 1
    assert store.count_calibration_samples(gallery) == (0, 0)
    assert store.load_calibration(gallery, OLD).sample_ids.size == 0
    assert store.count_calibration_samples("other") == (2, 2)  # another gallery's set stays
    for call in (
        lambda: store.add_calibration_samples("nope", OLD, [sample([1, 0])]),
        lambda: store.count_calibration_samples("nope"),
        lambda: store.load_calibration("nope", OLD),
        lambda: store.list_calibration_samples("nope", 0, 10),
        lambda: store.clear_calibration("nope"),
        lambda: store.calibration_images_missing_embedding("nope", NEW, 0, 10),
    ):
        with pytest.raises(NotFoundError) as error:
            call()
        assert_not_found(error, "gallery", "nope")
    assert store.delete_gallery("other")  # its set goes with it
    store.create_gallery("other", OLD, 0.01, "max", True)
    assert store.count_calibration_samples("other") == (0, 0)


def test_a_failed_calibration_upload_changes_nothing(store: Store, gallery: str) -> None:
    store.add_calibration_samples(gallery, OLD, [sample([1, 0])])
    before = version_of(store)
    bad = NewSample("hash", "embedding", np.array([1.0, 0.0], np.float32), image=object())  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend raises for a bad image
        store.add_calibration_samples(gallery, OLD, [sample([0, 1]), bad])
    assert store.count_calibration_samples(gallery) == (1, 1)
    assert version_of(store) == before


def test_calibration_migrates_with_the_gallery(store: Store, gallery: str) -> None:
    added, _ = store.add_calibration_samples(
        gallery, OLD, [sample([1, 0], image=b"a"), sample([0, 1], image=b"b")]
    )
    first, second = (a.sample_id for a in added)
    assert [
        i.sample_id for i in store.calibration_images_missing_embedding(gallery, NEW, 0, 10)
    ] == [
        first,
        second,
    ]
    chunk = store.calibration_images_missing_embedding(gallery, NEW, first, 10)
    assert [(i.sample_id, i.image) for i in chunk] == [(second, b"b")]
    store.put_calibration_embeddings(NEW, [first], np.array([[0.6, 0.8]], np.float32))
    assert [
        i.sample_id for i in store.calibration_images_missing_embedding(gallery, NEW, 0, 10)
    ] == [second]
    job = store.create_job("job-c", "migrate", gallery, OLD, NEW)
    with pytest.raises(StoreConflict, match="calibration"):  # one probe lacks a NEW embedding
        store.switch_gallery_model(gallery, OLD, NEW, job.job_id)
    assert store.get_gallery(gallery).model_id == OLD  # type: ignore[union-attr]
    assert store.load_calibration(gallery, OLD).sample_ids.size == 2
    store.put_calibration_embeddings(NEW, [second], np.array([[0.8, 0.6]], np.float32))
    store.switch_gallery_model(gallery, OLD, NEW, job.job_id)
    assert store.load_calibration(gallery, OLD).sample_ids.size == 0  # the old ones dropped
    np.testing.assert_array_equal(
        store.load_calibration(gallery, NEW).vectors,
        np.array([[0.6, 0.8], [0.8, 0.6]], np.float32),
    )
    # A fresh job drops shadow rows of its target, of probes as of samples.
    store.put_calibration_embeddings(OLD, [first], np.array([[1, 0]], np.float32))
    store.drop_embeddings(gallery, OLD)
    assert store.load_calibration(gallery, OLD).sample_ids.size == 0
    assert store.load_calibration(gallery, NEW).sample_ids.size == 2
    store.clear_calibration(gallery)
    store.put_calibration_embeddings(NEW, [first], np.array([[1, 0]], np.float32))  # gone: skipped
    assert store.load_calibration(gallery, NEW).sample_ids.size == 0


# -- API keys --


def test_api_keys(store: Store) -> None:
    assert store.count_api_keys() == 0 and store.find_api_key("h1") is None
    admin = store.add_api_key("h1", "admin", None)
    client = store.add_api_key("h2", "client", "ci")
    assert (admin.scope, admin.name) == ("admin", None) and admin.created
    assert (client.scope, client.name) == ("client", "ci") and client.key_id != admin.key_id
    assert store.find_api_key("h1") == admin and store.find_api_key("h2") == client
    assert store.find_api_key("h3") is None
    store.add_api_key("h3", "client", None)
    with pytest.raises(AlreadyExistsError):  # a hash is one key
        store.add_api_key("h1", "client", "again")
    assert store.find_api_key("h1") == admin
    assert store.count_api_keys() == 3
    assert (store.count_api_keys("admin"), store.count_api_keys("client")) == (1, 2)
    assert store.count_api_keys("none") == 0


def test_api_keys_are_listed_touched_and_revoked(store: Store) -> None:
    admin = store.add_api_key("h1", "admin", "first")
    client = store.add_api_key("h2", "client", None)
    assert store.list_api_keys() == [admin, client] and admin.last_used is None
    store.touch_api_key(client.key_id, "2026-01-02T03:04:05+00:00")
    touched = store.find_api_key("h2")
    assert touched is not None and touched.last_used == "2026-01-02T03:04:05+00:00"
    store.touch_api_key(999, "2026-01-02T03:04:05+00:00")  # a missing key: nothing happens
    assert store.revoke_api_key(client.key_id) == touched
    assert store.find_api_key("h2") is None and store.list_api_keys() == [admin]
    with pytest.raises(NotFoundError):
        store.revoke_api_key(client.key_id)
    with pytest.raises(LastAdminKeyError):
        store.revoke_api_key(admin.key_id)
    assert store.list_api_keys() == [admin]
    second = store.add_api_key("h3", "admin", None)
    store.revoke_api_key(admin.key_id)  # another admin key remains
    assert store.list_api_keys() == [second]


# -- registered models --


def test_registered_models(store: Store) -> None:
    assert store.registered_models() == {}
    store.register_model(OLD, "/bundles/one")
    store.register_model(NEW, "/bundles/two")
    store.register_model(OLD, "/bundles/one-moved")  # registering again replaces the path
    assert store.registered_models() == {OLD: "/bundles/one-moved", NEW: "/bundles/two"}


# -- jobs --


def test_jobs_lifecycle(store: Store) -> None:
    assert store.get_job("j1") is None and store.list_jobs() == []
    job = store.create_job("j1", "migrate", "g", OLD, NEW)
    assert (job.job_id, job.kind, job.gallery, job.source_model, job.target_model) == (
        "j1",
        "migrate",
        "g",
        OLD,
        NEW,
    )
    assert (job.status, job.done, job.total, job.error, job.attempts) == ("running", 0, 0, None, 1)
    assert job.created and store.get_job("j1") == job
    with pytest.raises(StoreConflict):  # one running job per gallery
        store.create_job("j2", "migrate", "g", OLD, NEW)
    assert store.get_job("j2") is None
    store.create_job("j3", "migrate", "h", OLD, NEW)  # another gallery is free
    store.update_job("j1", total=10)
    store.update_job("j1", done=4)
    assert (store.get_job("j1").done, store.get_job("j1").total) == (4, 10)  # type: ignore[union-attr]
    store.update_job("j1", status="failed", error="boom", attempt=True)
    failed = store.get_job("j1")
    assert failed is not None
    assert (failed.status, failed.error, failed.attempts, failed.done) == ("failed", "boom", 2, 4)
    store.update_job("j1", status="running")  # None keeps the error
    assert store.get_job("j1").error == "boom"  # type: ignore[union-attr]
    store.update_job("j1", status="succeeded")
    store.create_job("j2", "migrate", "g", NEW, OLD)  # nothing running on g any more
    with pytest.raises(AlreadyExistsError):  # an id is one job, running or not
        store.create_job("j1", "migrate", "free", OLD, NEW)
    assert store.get_job("j1").gallery == "g"  # type: ignore[union-attr]
    assert all(j.gallery != "free" for j in store.list_jobs())
    store.update_job("unknown", done=1)  # an unknown job: nothing to update
    assert store.get_job("unknown") is None

    jobs = store.list_jobs()
    assert sorted(j.job_id for j in jobs) == ["j1", "j2", "j3"]
    assert [j.created for j in jobs] == sorted(j.created for j in jobs)  # oldest first
    assert [j.job_id for j in store.list_jobs("running")] == [
        j.job_id for j in jobs if j.job_id in {"j2", "j3"}
    ]
    assert [j.job_id for j in store.list_jobs("succeeded")] == ["j1"]
    assert store.list_jobs("failed") == []


# -- lifetime --


def test_close_then_reopen_keeps_everything(store_url: str) -> None:
    store = open_store(store_url)
    store.create_gallery("g", OLD, 0.01, "max", True)
    store.put_subject("g", "a", {"k": 1})
    store.add_samples("g", "a", OLD, [sample([1, 2])])
    store.add_api_key("h", "admin", None)
    store.register_model(OLD, "/b")
    store.create_job("j", "migrate", "g", OLD, NEW)
    store.close()
    store = open_store(store_url)
    try:
        assert version_of(store) == 2
        assert store.get_subject("g", "a").metadata == {"k": 1}  # type: ignore[union-attr]
        np.testing.assert_array_equal(store.load_embeddings("g", OLD).vectors, [[1, 2]])
        assert store.find_api_key("h") is not None and store.registered_models() == {OLD: "/b"}
        assert store.get_job("j") is not None
    finally:
        store.close()


# -- concurrency --


def test_many_threads_writing_lose_nothing(store: Store, gallery: str) -> None:
    threads_count, rounds = 8, 15
    start = threading.Barrier(threads_count + 1)
    writers_done = threading.Event()
    returned: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    snapshots: list[tuple[int, int]] = []

    def write(worker: int) -> None:
        versions: list[int] = []
        try:
            start.wait()
            for i in range(rounds):
                subject_id = f"w{worker}-s{i:02d}"
                versions.append(store.put_subject(gallery, subject_id, {"w": worker})[2])
                vector = [float(worker), float(i), 1.0]
                versions.append(store.add_samples(gallery, subject_id, OLD, [sample(vector)])[2])
        except BaseException as error:
            errors.append(error)
        returned[worker] = versions

    def read() -> None:
        try:
            start.wait()
            while not writers_done.is_set():
                loaded = store.load_embeddings(gallery, OLD)
                sizes = {loaded.vectors.shape[0], loaded.sample_ids.size, loaded.subject_pks.size}
                assert len(sizes) == 1, sizes
                snapshots.append((loaded.version, int(loaded.sample_ids.size)))
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=write, args=(w,)) for w in range(threads_count)]
    reader = threading.Thread(target=read)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join()
    writers_done.set()
    reader.join()
    assert errors == []
    total = threads_count * rounds * 2
    for versions in returned.values():
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    everything = sorted(v for versions in returned.values() for v in versions)
    assert everything == list(range(1, total + 1))  # each write got its own version: none lost
    assert version_of(store) == total
    loaded = store.load_embeddings(gallery, OLD)
    assert loaded.sample_ids.size == threads_count * rounds
    got = {
        (loaded.subjects[pk], tuple(v))
        for pk, v in zip(loaded.subject_pks, loaded.vectors, strict=True)
    }
    want = {
        (f"w{w}-s{i:02d}", (float(w), float(i), 1.0))
        for w in range(threads_count)
        for i in range(rounds)
    }
    assert got == want
    # A reader sees whole transactions, in order: versions and sizes never go back.
    assert snapshots == sorted(snapshots)


def test_threads_on_separate_galleries_and_jobs_do_not_interfere(store: Store) -> None:
    galleries = [f"g{i}" for i in range(6)]
    start = threading.Barrier(len(galleries))
    conflicts: list[str] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait()
            store.create_gallery(name, OLD, 0.01, "max", True)
            for i in range(10):
                store.put_subject(name, f"s{i}", None)
            try:
                store.create_job("shared", "migrate", name, OLD, NEW)  # one id, one winner
            except AlreadyExistsError:  # the id is taken
                conflicts.append(name)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in galleries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [g.name for g in store.list_galleries()] == galleries
    assert all(g.version == 10 and g.subject_count == 10 for g in store.list_galleries())
    assert len(conflicts) == len(galleries) - 1 and len(store.list_jobs()) == 1


# -- crash safety --

WRITER = """
import hashlib, sys
import numpy as np
from service.storage import NewSample, open_store

store = open_store(sys.argv[1])
i = 0
while True:
    vector = np.array([i, i + 0.5, 1.0], dtype=np.float32)
    digest = hashlib.sha256(vector.tobytes()).hexdigest()
    subject_id = f"s{i:06d}"
    store.put_subject("g", subject_id, {"i": i})
    store.add_samples("g", subject_id, "m@1", [NewSample(digest, "embedding", vector)])
    store.add_calibration_samples("g", "m@1", [NewSample(digest, "embedding", 2 * vector)])
    print(i, flush=True)  # acknowledged: the three calls returned
    i += 1
"""


def test_every_acknowledged_write_survives_sigkill(store_url: str) -> None:
    setup = open_store(store_url)
    setup.create_gallery("g", OLD, 0.01, "max", True)
    setup.close()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        cwd=REPO,
    )
    acknowledged: list[int] = []
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 37:  # then kill it wherever it is in its loop
                break
        writer.send_signal(signal.SIGKILL)  # no cleanup runs
        writer.wait(timeout=60)
        # Lines written before the kill are still in the pipe; a cut line was not acknowledged.
        acknowledged += [int(line) for line in writer.stdout.read().split(b"\n")[:-1]]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL, writer.stderr.read().decode()  # type: ignore[union-attr]
    assert len(acknowledged) >= 37 and acknowledged == list(range(len(acknowledged)))

    store = open_store(store_url)
    try:
        loaded = store.load_embeddings("g", OLD)
        found = {
            loaded.subjects[pk]: tuple(v)
            for pk, v in zip(loaded.subject_pks, loaded.vectors, strict=True)
        }
        for i in acknowledged:
            assert found[f"s{i:06d}"] == (i, i + 0.5, 1.0)
            assert store.get_subject("g", f"s{i:06d}").metadata == {"i": i}  # type: ignore[union-attr]
        # At most the write in flight got further than its acknowledgement.
        assert len(found) - len(acknowledged) in {0, 1}
        probes = {tuple(v) for v in store.load_calibration("g", OLD).vectors}
        assert {(2 * i, 2 * i + 1, 2.0) for i in acknowledged} <= probes
        assert len(probes) - len(acknowledged) in {0, 1}
        record = store.get_gallery("g")
        assert record is not None and record.sample_count == loaded.sample_ids.size
        assert record.version >= 3 * len(acknowledged)
        store.put_subject("g", "after", None)  # and the store takes writes again
        assert version_of(store) == record.version + 1
    finally:
        store.close()

"""The change log contract, run against each backend (see conftest.py): every write that
changes what a replica holds in memory appends one change in its own transaction (a write that
changes nothing, or fails, appends none), in commit order even under concurrent writers, and a
follower waiting for changes wakes when another process's write commits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.storage import NewSample, Store, StoreConflict, open_store
from service.storage.protocols.changes import (
    CALIBRATION_CHANGED,
    GALLERY_CREATED,
    GALLERY_DELETED,
    KEY_CREATED,
    KEY_REVOKED,
    MODEL_REGISTERED,
    MODEL_SWITCHED,
    SAMPLES_ADDED,
    SAMPLES_REMOVED,
    SUBJECT_DELETED,
    SUBJECT_PUT,
)

from .conftest import NEW, OLD, sample


def new_changes(store: Store, after: int) -> list[tuple]:
    """(kind, gallery, subject_pk, subject_id, sample_ids, model_id, key_id) after `after`."""
    return [
        (c.kind, c.gallery, c.subject_pk, c.subject_id, c.sample_ids, c.model_id, c.key_id)
        for c in store.changes_after(after)
    ]


def test_an_empty_log(store: Store) -> None:
    assert store.last_change() == 0
    assert store.changes_after(0) == []


def test_each_write_appends_its_change_in_order(store: Store) -> None:
    store.create_gallery("g", OLD, 0.01, "max", True)
    a, created, _ = store.put_subject("g", "a", {"x": 1})
    b, _, _ = store.put_subject("g", "b", None)
    _, added, _ = store.add_samples("g", "a", OLD, [sample([1, 0], b"i1"), sample([0, 1], b"i2")])
    bulk = store.bulk_enrol("g", OLD, [("b", sample([1, 1], b"i3")), ("c", sample([2, 1], b"i4"))])
    store.delete_sample("g", "a", added[0].sample_id)
    store.add_calibration_samples("g", OLD, [sample([3, 1], b"p1")])
    store.clear_calibration("g")
    store.put_embeddings(
        NEW, [added[1].sample_id, *(i.sample_id for i in bulk.items)], np.eye(3, 2)
    )
    store.switch_gallery_model("g", OLD, NEW, None)
    store.delete_subject("g", "b")
    key = store.add_api_key("hash-1", "client", "k")
    store.add_api_key("hash-2", "admin", "admin")
    store.revoke_api_key(key.key_id)
    store.register_model(NEW, "/bundles/new")
    store.delete_gallery("g")
    c_pk = bulk.items[1].subject_pk
    assert created is True and c_pk is not None
    assert new_changes(store, 0) == [
        (GALLERY_CREATED, "g", None, None, (), None, None),
        (SUBJECT_PUT, "g", a.pk, "a", (), None, None),
        (SUBJECT_PUT, "g", b.pk, "b", (), None, None),
        (SAMPLES_ADDED, "g", None, None, tuple(i.sample_id for i in added), None, None),
        (SAMPLES_ADDED, "g", None, None, tuple(i.sample_id for i in bulk.items), None, None),
        (SAMPLES_REMOVED, "g", a.pk, "a", (added[0].sample_id,), None, None),
        (CALIBRATION_CHANGED, "g", None, None, (), None, None),
        (CALIBRATION_CHANGED, "g", None, None, (), None, None),
        (MODEL_SWITCHED, "g", None, None, (), NEW, None),
        (SUBJECT_DELETED, "g", b.pk, "b", (bulk.items[0].sample_id,), None, None),
        (KEY_CREATED, None, None, None, (), None, key.key_id),
        (KEY_CREATED, None, None, None, (), None, key.key_id + 1),
        (KEY_REVOKED, None, None, None, (), None, key.key_id),
        (MODEL_REGISTERED, None, None, None, (), NEW, None),
        (GALLERY_DELETED, "g", None, None, (), None, None),
    ]
    changes = store.changes_after(0)
    seqs = [change.seq for change in changes]
    assert seqs == sorted(set(seqs)) and store.last_change() == seqs[-1]
    assert all(change.created for change in changes)
    assert store.changes_after(seqs[4], limit=2) == changes[5:7]


def test_imported_gallery_is_one_change(store: Store) -> None:
    store.import_gallery("imp", OLD, 0.01, "max", False, [("a", {})], [("a", sample([1, 0]))])
    assert new_changes(store, 0) == [(GALLERY_CREATED, "imp", None, None, (), None, None)]


def test_writes_that_change_nothing_append_nothing(store: Store) -> None:
    store.create_gallery("g", OLD, 0.01, "max", True)
    store.put_subject("g", "a", None)
    store.add_samples("g", "a", OLD, [sample([1, 0])])
    store.add_calibration_samples("g", OLD, [sample([0, 1])])
    last = store.last_change()
    store.add_samples("g", "a", OLD, [sample([1, 0])])  # content it already has
    store.bulk_enrol(
        "g", OLD, [("a", sample([1, 0])), ("ghost", sample([1, 1]))], create_subjects=False
    )
    store.add_calibration_samples("g", OLD, [sample([0, 1])])
    assert store.delete_gallery("nope") is False
    with pytest.raises(StoreConflict):  # the switch is refused: nothing changed
        store.switch_gallery_model("g", OLD, NEW, None)
    broken = NewSample(None, "embedding", np.zeros(2, dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - the backend's own constraint error
        store.add_samples("g", "a", OLD, [sample([5, 5]), broken])  # rolled back whole
    store.put_embeddings(NEW, [1], np.ones((1, 2), dtype=np.float32))  # shadow rows only
    assert store.last_change() == last and store.changes_after(last) == []


def test_load_sample_embeddings_reads_what_the_gallery_holds_now(store: Store) -> None:
    store.create_gallery("g", OLD, 0.01, "max", True)
    store.put_subject("g", "a", None)
    store.put_subject("g", "b", None)
    a, added_a, _ = store.add_samples("g", "a", OLD, [sample([1, 0]), sample([0, 1])])
    b, added_b, _ = store.add_samples("g", "b", OLD, [sample([0.6, 0.8])])
    store.delete_sample("g", "a", added_a[0].sample_id)
    ids = [added_b[0].sample_id, added_a[1].sample_id, added_a[0].sample_id, 10_000]
    loaded = store.load_sample_embeddings("g", OLD, ids)
    assert loaded.sample_ids.tolist() == [added_a[1].sample_id, added_b[0].sample_id]
    assert loaded.subject_pks.tolist() == [a.pk, b.pk]
    assert loaded.subjects == {a.pk: "a", b.pk: "b"}
    np.testing.assert_array_equal(loaded.vectors, np.array([[0, 1], [0.6, 0.8]], np.float32))
    assert loaded.version == store.get_gallery("g").version  # type: ignore[union-attr]
    assert store.load_sample_embeddings("g", NEW, ids).sample_ids.size == 0  # no such model


def test_concurrent_writers_commit_in_log_order(store_url: str) -> None:
    """Writers on four galleries (two stores, as two replicas) while a follower reads the log
    incrementally: no change may commit with a seq below one the follower has already passed,
    so what it read, change by change, is the whole log."""
    stores = [open_store(store_url) for _ in range(2)]
    try:
        for name in "wxyz":
            stores[0].create_gallery(name, OLD, 0.01, "max", True)
            stores[0].put_subject(name, "s", None)
        start = stores[0].last_change()
        done = threading.Event()
        errors: list[BaseException] = []

        def write(store: Store, name: str) -> None:
            try:
                for i in range(25):
                    store.add_samples(name, "s", OLD, [sample([float(i), 1.0, ord(name)])])
            except BaseException as error:  # reported by the test thread
                errors.append(error)

        writers = [
            threading.Thread(target=write, args=(stores[i % 2], name))
            for i, name in enumerate("wxyz")
        ]
        for writer in writers:
            writer.start()
        followed: list[int] = []
        cursor = start
        while not done.is_set():
            if not any(writer.is_alive() for writer in writers):
                done.set()  # one more read after the last write
            for change in stores[1].changes_after(cursor):
                followed.append(change.seq)
                cursor = change.seq
        for writer in writers:
            writer.join()
        assert not errors
        assert followed == [change.seq for change in stores[0].changes_after(start, limit=1000)]
        assert len(followed) == 100
    finally:
        for opened in stores:
            opened.close()


def test_a_follower_wakes_when_another_process_writes(store_url: str) -> None:
    follower, writer = open_store(store_url), open_store(store_url)
    try:
        writer.create_gallery("g", OLD, 0.01, "max", True)
        seq = follower.last_change()
        assert follower.wait_for_changes(seq, 0.05) is False  # nothing new: the timeout
        assert follower.wait_for_changes(seq - 1, 0.05) is True  # already there
        woken = threading.Event()

        def wait() -> None:
            if follower.wait_for_changes(seq, 30.0):
                woken.set()

        waiting = threading.Thread(target=wait)
        waiting.start()
        writer.put_subject("g", "a", None)
        waiting.join(30.0)
        assert woken.is_set()
        assert [c.kind for c in follower.changes_after(seq)] == [SUBJECT_PUT]
    finally:
        follower.close()
        writer.close()


def test_pruning_keeps_recent_changes_and_always_the_newest(store: Store) -> None:
    store.create_gallery("g", OLD, 0.01, "max", True)
    for subject in "abcde":
        store.put_subject("g", subject, None)
    seqs = [change.seq for change in store.changes_after(0)]
    assert store.prune_changes(3600) == 0  # nothing is an hour old
    assert store.prune_changes(-60, limit=2) == 2  # the oldest first, at most `limit`
    assert [change.seq for change in store.changes_after(0)] == seqs[2:]
    assert store.prune_changes(-60) == len(seqs) - 3  # all but the newest
    assert [change.seq for change in store.changes_after(0)] == seqs[-1:]
    assert store.last_change() == seqs[-1]
    store.put_subject("g", "f", None)
    assert [change.seq for change in store.changes_after(seqs[-1])] == [seqs[-1] + 1]


def test_an_exclusive_section_is_held_by_one_holder_at_a_time(store: Store) -> None:
    """Two holders of one name take turns (each on its own thread, as two processes' calls
    would arrive); another name is not held back."""
    entered = {name: threading.Event() for name in ("second", "other")}
    leave = threading.Event()
    inside: list[str] = []

    def hold(name: str, label: str) -> None:
        with store.exclusive(name):
            inside.append(label)
            entered[label].set()
            assert leave.wait(timeout=30)

    with store.exclusive("index:a"):
        second = threading.Thread(target=hold, args=("index:a", "second"))
        other = threading.Thread(target=hold, args=("index:b", "other"))
        second.start()
        other.start()
        assert entered["other"].wait(timeout=30)  # another name: not held back
        # The same name: still waiting while the first holder is inside (a bounded wait that
        # fails the test only if the section let it in).
        assert not entered["second"].wait(timeout=0.5)
        inside.append("first leaves")
    assert entered["second"].wait(timeout=30)
    leave.set()
    second.join(timeout=30)
    other.join(timeout=30)
    assert inside == ["other", "first leaves", "second"]

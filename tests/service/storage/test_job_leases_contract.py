"""Job leases (one replica runs a job) and the writes that a model switch made elsewhere
refuses, run against each backend (see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.storage import Store, StoreConflict

from .conftest import NEW, OLD, sample


@pytest.fixture
def gallery(store: Store) -> str:
    store.create_gallery("g", OLD, 0.01, "max", True)
    store.put_subject("g", "a", None)
    return "g"


def test_one_owner_holds_a_lease_until_it_expires_or_is_released(
    store: Store, gallery: str
) -> None:
    store.create_job("j", "migrate", gallery, OLD, NEW, owner="replica-a", lease_seconds=60)
    assert store.claim_job("j", "replica-b", 60) is False  # a's lease holds
    assert store.claim_job("j", "replica-a", 60) is True  # renewed by its holder
    store.release_job("j", "replica-b")  # not b's: nothing happens
    assert store.claim_job("j", "replica-b", 60) is False
    store.release_job("j", "replica-a")
    assert store.claim_job("j", "replica-b", 60) is True  # free: b takes it
    assert store.claim_job("j", "replica-a", 60) is False


def test_an_expired_lease_is_taken_over(store: Store, gallery: str) -> None:
    store.create_job("j", "migrate", gallery, OLD, NEW, owner="replica-a", lease_seconds=-1)
    assert store.claim_job("j", "replica-b", 60) is True  # a stopped renewing: expired
    assert store.claim_job("j", "replica-a", 60) is False


def test_only_running_jobs_are_claimed(store: Store, gallery: str) -> None:
    assert store.claim_job("nope", "replica-a", 60) is False
    store.create_job("j", "migrate", gallery, OLD, NEW)  # no owner: free to claim
    store.update_job("j", status="failed", error="x")
    assert store.claim_job("j", "replica-a", 60) is False
    store.create_job("k", "migrate", gallery, OLD, NEW)
    assert store.claim_job("k", "replica-a", 60) is True


def test_the_switch_commits_only_for_the_lease_holder(store: Store, gallery: str) -> None:
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0])])
    store.put_embeddings(NEW, [added[0].sample_id], np.array([[0, 1]], np.float32))
    store.create_job("j", "migrate", gallery, OLD, NEW, owner="replica-a", lease_seconds=-1)
    assert store.claim_job("j", "replica-b", 60)
    with pytest.raises(StoreConflict):  # a lost its lease: its switch changes nothing
        store.switch_gallery_model(gallery, OLD, NEW, None, lease=("j", "replica-a"))
    assert store.get_gallery(gallery).model_id == OLD  # type: ignore[union-attr]
    store.switch_gallery_model(gallery, OLD, NEW, None, lease=("j", "replica-b"))
    assert store.get_gallery(gallery).model_id == NEW  # type: ignore[union-attr]


def test_writes_embedded_by_a_model_the_gallery_left_are_refused(
    store: Store, gallery: str
) -> None:
    """Another replica switched the gallery after this one embedded: nothing is written."""
    _, added, _ = store.add_samples(gallery, "a", OLD, [sample([1, 0])])
    store.put_embeddings(NEW, [added[0].sample_id], np.array([[0, 1]], np.float32))
    store.switch_gallery_model(gallery, OLD, NEW, None)
    version, last = store.get_gallery(gallery).version, store.last_change()  # type: ignore[union-attr]
    with pytest.raises(StoreConflict):
        store.add_samples(gallery, "a", OLD, [sample([2, 0])])
    with pytest.raises(StoreConflict):
        store.bulk_enrol(gallery, OLD, [("b", sample([3, 0]))])
    with pytest.raises(StoreConflict):
        store.add_calibration_samples(gallery, OLD, [sample([4, 0])])
    assert store.get_gallery(gallery).version == version  # type: ignore[union-attr]
    assert store.last_change() == last and store.get_subject(gallery, "b") is None
    _, again, _ = store.add_samples(gallery, "a", NEW, [sample([2, 0])])
    assert again[0].created


def test_the_lease_holder_is_named(store: Store, gallery: str) -> None:
    assert store.lease_holder("j") is None
    store.create_job("j", "migrate", gallery, OLD, NEW, owner="host:12:ab", lease_seconds=-1)
    assert store.lease_holder("j") == "host:12:ab"  # expired, still named
    store.release_job("j", "host:12:ab")
    assert store.lease_holder("j") is None

"""The store contract for the console and gallery transfer: subject prefix search, one sample's
kept image, paged export of samples, and the all-or-nothing import of a whole gallery.

Run against every backend of conftest.BACKENDS, like test_store_contract.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from service.storage import AlreadyExistsError, NotFoundError, Store

from .conftest import NEW, OLD, sample


@pytest.fixture
def gallery(store: Store) -> str:
    store.create_gallery("g", OLD, 0.01, "max", True)
    return "g"


def test_list_subjects_by_prefix(store: Store, gallery: str) -> None:
    ids = ["ab", "a", "abc", "a%", "a_b", "b", "Ab", "ábc", "ab\U0001f600", "abd"]
    for subject_id in ids:
        store.put_subject(gallery, subject_id, None)
    store.create_gallery("other", OLD, 0.01, "max", True)
    store.put_subject("other", "abz", None)

    def listed(prefix: str | None, limit: int = 100, after: str | None = None) -> list[str]:
        return [s.subject_id for s in store.list_subjects(gallery, limit, after, prefix)]

    # A brute-force reference: every id that starts with the prefix, in code point order.
    for prefix in ["ab", "a", "a%", "a_", "A", "á", "ab\U0001f600", "zz", ""]:
        assert listed(prefix) == sorted(i for i in ids if i.startswith(prefix)), prefix
    assert listed(None) == sorted(ids)
    # Paging within a prefix: after the cursor, still only the prefix.
    assert listed("ab", limit=2) == ["ab", "abc"]
    assert listed("ab", limit=2, after="abc") == ["abd", "ab\U0001f600"]
    assert listed("ab", after="ab\U0001f600") == []
    with pytest.raises(NotFoundError):
        store.list_subjects("nope", 10, None, "a")


def test_get_sample_image(store: Store, gallery: str) -> None:
    store.put_subject(gallery, "a", None)
    store.put_subject(gallery, "b", None)
    _, added, _ = store.add_samples(
        gallery, "a", OLD, [sample([1, 0], b"png-bytes"), sample([0, 1])]
    )
    with_image, without_image = (item.sample_id for item in added)
    assert store.get_sample_image(gallery, "a", with_image) == b"png-bytes"
    assert store.get_sample_image(gallery, "a", without_image) is None
    for call, what, name in [
        (lambda: store.get_sample_image(gallery, "b", with_image), "sample", with_image),
        (lambda: store.get_sample_image(gallery, "a", 10**9), "sample", 10**9),
        (lambda: store.get_sample_image(gallery, "zz", with_image), "subject", "zz"),
        (lambda: store.get_sample_image("nope", "a", with_image), "gallery", "nope"),
    ]:
        with pytest.raises(NotFoundError) as error:
            call()
        assert (error.value.what, error.value.name) == (what, name)


def test_export_samples_pages_by_id_with_one_models_embeddings(store: Store, gallery: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 3)).astype(np.float32)
    store.put_subject(gallery, "a", {"x": 1})
    store.put_subject(gallery, "b", None)
    _, first, _ = store.add_samples(gallery, "a", OLD, [sample(list(vectors[0]), b"i0")])
    _, second, _ = store.add_samples(gallery, "b", OLD, [sample(list(v)) for v in vectors[1:4]])
    _, third, _ = store.add_samples(gallery, "a", OLD, [sample(list(vectors[4]), b"i4")])
    ids = [item.sample_id for item in [*first, *second, *third]]
    store.put_embeddings(NEW, ids[:2], np.ones((2, 4), dtype=np.float32))
    store.create_gallery("other", OLD, 0.01, "max", True)
    store.put_subject("other", "a", None)
    store.add_samples("other", "a", OLD, [sample([9, 9, 9])])

    exported, after = [], 0
    while page := store.export_samples(gallery, OLD, after, 2):
        assert len(page) <= 2
        exported += page
        after = page[-1].sample_id
    assert [s.sample_id for s in exported] == ids
    assert [s.subject_id for s in exported] == ["a", "b", "b", "b", "a"]
    assert [s.image for s in exported] == [b"i0", None, None, None, b"i4"]
    assert [s.source for s in exported] == ["image", "embedding", "embedding", "embedding", "image"]
    np.testing.assert_array_equal(np.stack([s.embedding for s in exported]), vectors)
    assert all(s.embedding.dtype == np.float32 for s in exported)
    expected_hash = hashlib.sha256(vectors[1].tobytes()).hexdigest()
    assert exported[1].content_sha256 == expected_hash
    shadow = store.export_samples(gallery, NEW, 0, 10)
    assert [s.sample_id for s in shadow] == ids[:2]
    np.testing.assert_array_equal(shadow[0].embedding, np.ones(4, dtype=np.float32))
    with pytest.raises(NotFoundError):
        store.export_samples("nope", OLD, 0, 10)


def test_import_gallery_writes_everything_in_one_go(store: Store) -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    items = [
        ("b", sample(list(vectors[0]), b"img")),
        ("a", sample(list(vectors[1]))),
        ("b", sample(list(vectors[2]))),
    ]
    record = store.import_gallery(
        "copy", OLD, 0.05, "mean", True, [("a", {"k": [1]}), ("b", {}), ("c", {})], items
    )
    assert (record.name, record.model_id, record.fpir, record.scoring) == (
        "copy",
        OLD,
        0.05,
        "mean",
    )
    assert (record.keep_images, record.subject_count, record.sample_count) == (True, 3, 3)
    assert store.get_subject("copy", "a").metadata == {"k": [1]}  # type: ignore[union-attr]
    exported = store.export_samples("copy", OLD, 0, 10)
    assert [(s.subject_id, s.image) for s in exported] == [("b", b"img"), ("a", None), ("b", None)]
    np.testing.assert_array_equal(np.stack([s.embedding for s in exported]), vectors)
    loaded = store.load_embeddings("copy", OLD)
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert sorted(loaded.subjects.values()) == ["a", "b", "c"]
    # A gallery that keeps no images stores none, whatever the samples carry.
    plain = store.import_gallery("plain", OLD, 0.05, "max", False, [("b", {})], items[:1])
    assert plain.keep_images is False
    assert store.export_samples("plain", OLD, 0, 10)[0].image is None


def test_a_failed_import_leaves_nothing(store: Store) -> None:
    store.create_gallery("taken", OLD, 0.01, "max", True)
    before = [g.name for g in store.list_galleries()]
    with pytest.raises(AlreadyExistsError):
        store.import_gallery("taken", OLD, 0.01, "max", True, [("a", {})], [])
    assert store.get_gallery("taken").subject_count == 0  # type: ignore[union-attr]
    # A sample of a subject the import does not create fails after the gallery and its
    # subjects were written: the whole transaction goes.
    with pytest.raises(NotFoundError):
        store.import_gallery(
            "new", OLD, 0.01, "max", True, [("a", {})], [("a", sample([1.0])), ("b", sample([2.0]))]
        )
    assert store.get_gallery("new") is None
    assert [g.name for g in store.list_galleries()] == before
    # The name is free again afterwards.
    assert store.import_gallery("new", OLD, 0.01, "max", True, [], []).subject_count == 0


def test_export_calibration_samples_pages_by_id_with_one_models_embeddings(
    store: Store, gallery: str
) -> None:
    vectors = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    probes = [sample(list(vectors[0]), b"c0"), *(sample(list(v)) for v in vectors[1:])]
    added, _ = store.add_calibration_samples(gallery, OLD, probes)
    ids = [item.sample_id for item in added]
    store.put_calibration_embeddings(NEW, ids[1:2], np.ones((1, 5), dtype=np.float32))
    store.create_gallery("other", OLD, 0.01, "max", True)
    store.add_calibration_samples("other", OLD, [sample([7, 7, 7])])

    exported, after = [], 0
    while page := store.export_calibration_samples(gallery, OLD, after, 3):
        assert len(page) <= 3
        exported += page
        after = page[-1].sample_id
    assert [p.sample_id for p in exported] == ids
    assert [p.image for p in exported] == [b"c0", None, None, None]
    assert [p.source for p in exported] == ["image", "embedding", "embedding", "embedding"]
    assert [p.content_sha256 for p in exported] == [p.content_sha256 for p in probes]
    np.testing.assert_array_equal(np.stack([p.embedding for p in exported]), vectors)
    assert all(p.embedding.dtype == np.float32 for p in exported)
    shadow = store.export_calibration_samples(gallery, NEW, 0, 10)
    assert [p.sample_id for p in shadow] == ids[1:2]
    np.testing.assert_array_equal(shadow[0].embedding, np.ones(5, dtype=np.float32))
    with pytest.raises(NotFoundError):
        store.export_calibration_samples("nope", OLD, 0, 10)


def test_import_gallery_writes_its_calibration_set_too(store: Store) -> None:
    vectors = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    probes = [sample(list(vectors[0])), sample(list(vectors[1]), b"img"), sample(list(vectors[2]))]
    record = store.import_gallery(
        "copy", OLD, 0.05, "max", True, [("a", {})], [("a", sample([1, 0, 0, 0]))], probes
    )
    assert (record.subject_count, record.sample_count) == (1, 1)
    assert store.count_calibration_samples("copy") == (3, 2)
    loaded = store.load_calibration("copy", OLD)
    np.testing.assert_array_equal(loaded.vectors, vectors)  # in the order given
    listed = store.list_calibration_samples("copy", 0, 10)
    assert [p.content_sha256 for p in listed] == [p.content_sha256 for p in probes]
    assert [(p.source, p.has_image) for p in listed] == [
        ("embedding", False),
        ("image", True),
        ("embedding", False),
    ]
    assert store.export_calibration_samples("copy", OLD, 0, 10)[1].image == b"img"
    # A gallery that keeps no images keeps no probe images either.
    store.import_gallery("plain", OLD, 0.05, "max", False, [], [], probes[1:2])
    assert store.count_calibration_samples("plain") == (1, 1)
    # Without a calibration set, the gallery has none.
    store.import_gallery("bare", OLD, 0.05, "max", True, [], [])
    assert store.count_calibration_samples("bare") == (0, 0)


def test_an_import_with_a_bad_calibration_set_leaves_nothing(store: Store) -> None:
    before = [g.name for g in store.list_galleries()]
    probe = sample([1.0, 2.0])
    # The probes are written last: the repeated content fails after the gallery, its
    # subjects and samples were written, and the whole transaction goes.
    with pytest.raises(AlreadyExistsError):
        store.import_gallery(
            "new", OLD, 0.01, "max", True, [("a", {})], [("a", sample([3.0, 4.0]))], [probe, probe]
        )
    assert store.get_gallery("new") is None
    assert [g.name for g in store.list_galleries()] == before
    record = store.import_gallery("new", OLD, 0.01, "max", True, [], [], [probe])
    assert record.sample_count == 0
    assert store.count_calibration_samples("new") == (1, 1)

"""The store contract for the console and gallery transfer: subject prefix search, one sample's
kept image, paged export of samples, and the all-or-nothing import of a whole gallery.

Run against every backend of conftest.BACKENDS, like test_store_contract.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from service.storage import AlreadyExistsError, NewSample, NotFoundError, Store

OLD, NEW = "m@1", "m@2"


def sample(vector: list[float], image: bytes | None = None) -> NewSample:
    array = np.asarray(vector, dtype=np.float32)
    content = image if image is not None else array.tobytes()
    return NewSample(
        hashlib.sha256(content).hexdigest(), "image" if image else "embedding", array, image
    )


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

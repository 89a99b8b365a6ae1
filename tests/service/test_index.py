"""The subject index against brute-force numpy references."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from service.index import FlatIPIndex, SubjectIndex
from service.index.flat import set_search_threads

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_index_add_remove_search() -> None:
    rng = np.random.default_rng(0)
    index = FlatIPIndex(DIM)
    vectors = unit(rng, 50)
    index.add(np.arange(100, 150), vectors)
    query = unit(rng, 1)
    scores, ids = index.search(query, 5)
    reference = np.argsort(-(vectors @ query[0]))[:5] + 100
    assert ids[0].tolist() == reference.tolist()
    np.testing.assert_allclose(scores[0], np.sort(vectors @ query[0])[::-1][:5], atol=1e-6)
    assert index.remove(np.array([reference[0], 9999])) == 1
    assert len(index) == 49
    _, ids = index.search(query, 1)
    assert ids[0, 0] == reference[1]
    np.testing.assert_array_equal(index.reconstruct(np.array([101])), vectors[1:2])
    with pytest.raises(ValueError):
        index.add(np.array([1]), np.zeros((1, DIM + 1), dtype=np.float32))


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_subject_search_is_exact_and_never_duplicates(scoring: str) -> None:
    rng = np.random.default_rng(1)
    index = SubjectIndex(DIM, scoring)
    members: dict[int, np.ndarray] = {}
    next_id = 1
    for pk in range(30):
        # Uneven subjects: some with many near-identical samples that crowd the sample ranking.
        count = 20 if pk < 3 else 1 + pk % 3
        base = unit(rng, 1)
        vectors = base + 0.05 * unit(rng, count)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = np.arange(next_id, next_id + count)
        next_id += count
        index.add_samples(pk, f"subject{pk}", ids, vectors, version=pk + 1)
        members[pk] = vectors
    queries = np.vstack([members[0][:1], unit(rng, 5)])
    for query, row in zip(queries, index.search(queries, 10), strict=True):
        if scoring == "max":
            truth = {pk: float((v @ query).max()) for pk, v in members.items()}
        else:
            truth = {
                pk: float(v.mean(axis=0) @ query / np.linalg.norm(v.mean(axis=0)))
                for pk, v in members.items()
            }
        expected = sorted(truth.items(), key=lambda item: -item[1])[:10]
        assert [name for name, _ in row] == [f"subject{pk}" for pk, _ in expected]
        np.testing.assert_allclose([s for _, s in row], [s for _, s in expected], atol=1e-5)
    assert index.version == 30
    np.testing.assert_allclose(
        index.top1_scores(queries), [row[0][1] for row in index.search(queries, 1)], atol=1e-6
    )


def test_remove_subject_and_empty_index() -> None:
    rng = np.random.default_rng(2)
    index = SubjectIndex(DIM, "max")
    assert index.search(unit(rng, 2), 3) == [[], []]
    assert np.isneginf(index.top1_scores(unit(rng, 2))).all()
    index.add_samples(1, "a", np.array([1, 2]), unit(rng, 2), version=1)
    index.add_samples(2, "b", np.array([3]), unit(rng, 1), version=2)
    index.remove_subject(1, np.array([1, 2]), version=3)
    assert [name for name, _ in index.search(unit(rng, 1), 5)[0]] == ["b"]
    assert index.sample_count == 1 and index.subject_count == 1
    assert index.subject_scores(unit(rng, 1), "a") is None


def test_search_threads_apply_in_every_searching_thread() -> None:
    # OpenMP thread counts are per thread: a worker thread that searches must get the setting.
    index = FlatIPIndex(DIM)
    index.add(np.arange(8), unit(np.random.default_rng(0), 8))
    seen: list[int] = []

    def search_in_a_new_thread() -> None:
        index.search(unit(np.random.default_rng(1), 1), 3)
        seen.append(faiss.omp_get_max_threads())

    set_search_threads(1)
    worker = threading.Thread(target=search_in_a_new_thread)
    worker.start()
    worker.join()
    assert seen == [1]

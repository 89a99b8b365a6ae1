"""What is particular to the FAISS backend; the SubjectSearch behaviour every backend shares
is tested in test_subject_search.py."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from service.index import IndexConfigError, open_index
from service.index.faiss import FaissSubjectIndex, FlatIP, set_search_threads

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_index_add_remove_search() -> None:
    rng = np.random.default_rng(0)
    index = FlatIP(DIM)
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


def test_search_threads_apply_in_every_searching_thread() -> None:
    # OpenMP thread counts are per thread: a worker thread that searches must get the setting.
    index = FlatIP(DIM)
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


def test_subject_vectors_follow_removals() -> None:
    rng = np.random.default_rng(3)
    index = FaissSubjectIndex(DIM, "max")
    index.set_subject(1, "a")
    assert index.subject_vectors("a") is None  # no samples yet
    vectors = unit(rng, 2).astype(np.float32)
    index.add_samples(1, "a", np.array([1, 2]), vectors)
    index.remove_samples(np.array([1]))
    np.testing.assert_array_equal(index.subject_vectors("a"), vectors[1:])
    index.remove_samples(np.array([2]))
    assert index.subject_vectors("a") is None and index.subject_vectors("ghost") is None


def test_open_index_names_what_it_supports() -> None:
    assert open_index("faiss://").name == "faiss"
    assert open_index(None).name == "faiss"
    with pytest.raises(IndexConfigError, match="'redis'") as error:
        open_index("redis://user:secret@host")
    assert "secret" not in str(error.value)

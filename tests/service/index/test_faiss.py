"""The FAISS subject index against brute-force numpy references and models.scoring."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from models.scoring import SubjectScorer, decide
from service.index import IndexConfigError, IndexContents, open_index
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


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_subject_search_is_exact_and_never_duplicates(scoring: str) -> None:
    rng = np.random.default_rng(1)
    index = FaissSubjectIndex(DIM, scoring)
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
        index.add_samples(pk, f"subject{pk}", ids, vectors)
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
        assert [c.subject_id for c in row] == [f"subject{pk}" for pk, _ in expected]
        np.testing.assert_allclose([c.score for c in row], [s for _, s in expected], atol=1e-5)
    for pk, vectors in members.items():
        held = index.subject_vectors(f"subject{pk}")
        if scoring == "max":  # its samples, by sample id (the order they were added in)
            np.testing.assert_allclose(held, vectors, atol=1e-7)
        else:
            mean = vectors.mean(axis=0)
            np.testing.assert_allclose(held, [mean / np.linalg.norm(mean)], atol=1e-6)


def test_remove_subject_and_empty_index() -> None:
    rng = np.random.default_rng(2)
    index = FaissSubjectIndex(DIM, "max")
    assert index.search(unit(rng, 2), 3) == [[], []]
    assert index.subject_vectors("a") is None
    index.add_samples(1, "a", np.array([1, 2]), unit(rng, 2))
    index.add_samples(2, "b", np.array([3]), unit(rng, 1))
    index.remove_subject(1, np.array([1, 2]))
    assert [c.subject_id for c in index.search(unit(rng, 1), 5)[0]] == ["b"]
    assert index.sample_count == 1 and index.subject_count == 1
    assert index.subject_scores(unit(rng, 1), "a") is None


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


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_service_and_training_score_and_decide_alike(scoring: str) -> None:
    """The service's index and training's SubjectScorer (models.scoring) on the same
    embeddings: the same top-k subjects, the same scores, the same decisions."""
    rng = np.random.default_rng(7)
    subjects = rng.integers(0, 40, size=300)
    samples = rng.standard_normal((300, DIM))
    probes = rng.standard_normal((50, DIM))
    scorer = SubjectScorer(samples, [f"s{pk:02d}" for pk in subjects], scoring)  # type: ignore[arg-type]
    backend = open_index(None)
    unit_samples = (samples / np.linalg.norm(samples, axis=1, keepdims=True)).astype(np.float32)
    index = backend.build(
        DIM,
        scoring,
        IndexContents(
            np.arange(1, 301, dtype=np.int64),
            subjects.astype(np.int64),
            unit_samples,
            {int(pk): f"s{pk:02d}" for pk in np.unique(subjects)},
        ),
    )
    unit_probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    labels, scores = scorer.top_k(probes, 5)
    threshold = float(np.median(scores[:, 0]))
    for row, expected_labels, expected_scores in zip(
        index.search(unit_probes, 5), labels, scores, strict=True
    ):
        assert [c.subject_id for c in row] == expected_labels.tolist()
        np.testing.assert_allclose([c.score for c in row], expected_scores, atol=1e-6)
        assert decide(row[0].score, threshold) == decide(float(expected_scores[0]), threshold)


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


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_add_many_equals_adding_subject_by_subject(scoring: str) -> None:
    rng = np.random.default_rng(11)
    pks = rng.integers(1, 30, size=120)
    vectors = unit(rng, 120)
    sample_ids = np.arange(1, 121)
    one_by_one = FaissSubjectIndex(DIM, scoring)
    for pk, sample_id, vector in zip(pks, sample_ids, vectors, strict=True):
        one_by_one.add_samples(int(pk), f"s{pk}", np.array([sample_id]), vector[None, :])
    at_once = FaissSubjectIndex(DIM, scoring)
    at_once.add_many(pks, [f"s{pk}" for pk in pks], sample_ids, vectors)
    at_once.add_many(pks[:5], [f"s{pk}" for pk in pks[:5]], sample_ids[:5], vectors[:5])  # again
    queries = unit(rng, 20)
    expected, got = one_by_one.search(queries, 7), at_once.search(queries, 7)
    assert [[c.subject_id for c in row] for row in got] == [
        [c.subject_id for c in row] for row in expected
    ]
    np.testing.assert_allclose(
        [[c.score for c in row] for row in got],
        [[c.score for c in row] for row in expected],
        atol=1e-6,
    )
    assert (at_once.sample_count, at_once.subject_count) == (120, len(set(pks.tolist())))

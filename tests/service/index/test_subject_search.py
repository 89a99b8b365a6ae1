"""Every index backend against brute-force numpy references and models.scoring: the same
subjects, the same scores, the same decisions (tests/service/index/conftest.py runs each test
on each backend)."""

from __future__ import annotations

import numpy as np
import pytest

from models.scoring import SubjectScorer, decide
from service.index import IndexBackend, IndexContents, SubjectSearch

DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def empty(backend: IndexBackend, scoring: str) -> SubjectSearch:
    return backend.build(DIM, scoring, IndexContents.empty(DIM))


def reference(
    members: dict[int, np.ndarray], query: np.ndarray, scoring: str, top_k: int
) -> list[tuple[int, float]]:
    """Brute force: every subject's score, best first."""
    if scoring == "max":
        truth = {pk: float((v @ query).max()) for pk, v in members.items() if len(v)}
    else:
        truth = {
            pk: float(v.sum(axis=0) @ query / np.linalg.norm(v.sum(axis=0)))
            for pk, v in members.items()
            if len(v)
        }
    return sorted(truth.items(), key=lambda item: -item[1])[:top_k]


def assert_matches(
    index: SubjectSearch, members: dict[int, np.ndarray], queries: np.ndarray, top_k: int
) -> None:
    for query, row in zip(queries, index.search(queries, top_k), strict=True):
        expected = reference(members, query, index.scoring, top_k)
        assert [c.subject_id for c in row] == [f"subject{pk}" for pk, _ in expected]
        np.testing.assert_allclose([c.score for c in row], [s for _, s in expected], atol=1e-5)


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_subject_search_is_exact_and_never_duplicates(
    index_backend: IndexBackend, scoring: str
) -> None:
    rng = np.random.default_rng(1)
    index = empty(index_backend, scoring)
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
    assert_matches(index, members, queries, 10)
    stored = index.subject_vectors("subject0")
    if scoring == "max":  # its samples, by sample id
        np.testing.assert_allclose(stored, members[0], atol=1e-7)  # type: ignore[arg-type]
    else:  # its template
        summed = members[0].sum(axis=0)
        np.testing.assert_allclose(stored, [summed / np.linalg.norm(summed)], atol=1e-6)  # type: ignore[arg-type]
    assert index.subject_vectors("nobody") is None
    for pk in (0, 7):
        want = [s for p, s in reference(members, queries[0], scoring, 30) if p == pk]
        got = index.subject_scores(queries[:1], f"subject{pk}")
        assert got is not None
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_removals_leave_exactly_what_remains(index_backend: IndexBackend, scoring: str) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 40)
    subjects = np.arange(40) % 8
    contents = IndexContents(
        np.arange(1, 41, dtype=np.int64),
        subjects.astype(np.int64),
        vectors,
        {pk: f"subject{pk}" for pk in range(9)},  # subject 8 has no samples
    )
    index = index_backend.build(DIM, scoring, contents)
    assert (index.subject_count, index.sample_count) == (9, 40)
    members = {pk: vectors[subjects == pk] for pk in range(8)}
    queries = unit(rng, 4)
    assert_matches(index, members, queries, 5)
    index.remove_samples(np.array([1, 2, 9, 999]))  # samples of subjects 0, 1 and 0; one absent
    members[0] = vectors[(subjects == 0) & ~np.isin(np.arange(1, 41), [1, 9])]
    members[1] = vectors[(subjects == 1) & (np.arange(1, 41) != 2)]
    index.remove_subject(3, np.flatnonzero(subjects == 3) + 1)
    del members[3]
    assert (index.subject_count, index.sample_count) == (8, 32)  # 40 - 3 - 5
    assert_matches(index, members, queries, 8)
    assert index.subject_scores(queries, "subject3") is None
    assert index.subject_scores(queries, "subject8") is None  # no samples
    index.add_samples(8, "subject8", np.array([100]), queries[:1])
    members[8] = queries[:1]
    assert [c.subject_id for c in index.search(queries[:1], 1)[0]] == ["subject8"]
    assert_matches(index, members, queries, 8)


def test_remove_subject_and_empty_index(index_backend: IndexBackend) -> None:
    rng = np.random.default_rng(2)
    index = empty(index_backend, "max")
    assert index.search(unit(rng, 2), 3) == [[], []]
    index.add_samples(1, "a", np.array([1, 2]), unit(rng, 2))
    index.add_samples(2, "b", np.array([3]), unit(rng, 1))
    index.remove_subject(1, np.array([1, 2]))
    assert [c.subject_id for c in index.search(unit(rng, 1), 5)[0]] == ["b"]
    assert index.sample_count == 1 and index.subject_count == 1
    assert index.subject_scores(unit(rng, 1), "a") is None


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_service_and_training_score_and_decide_alike(
    index_backend: IndexBackend, scoring: str
) -> None:
    """The service's index and training's SubjectScorer (models.scoring) on the same
    embeddings: the same top-k subjects, the same scores, the same decisions."""
    rng = np.random.default_rng(7)
    subjects = rng.integers(0, 40, size=300)
    samples = rng.standard_normal((300, DIM))
    probes = rng.standard_normal((50, DIM))
    scorer = SubjectScorer(samples, [f"s{pk:02d}" for pk in subjects], scoring)  # type: ignore[arg-type]
    unit_samples = (samples / np.linalg.norm(samples, axis=1, keepdims=True)).astype(np.float32)
    index = index_backend.build(
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


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_add_many_is_the_same_as_adding_subject_by_subject(
    index_backend: IndexBackend, scoring: str
) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng, 30)
    subjects = rng.integers(0, 6, size=30)
    index = empty(index_backend, scoring)
    index.add_samples(0, "subject0", np.array([100]), vectors[:1])  # one already there
    index.add_many(
        subjects, [f"subject{pk}" for pk in subjects], np.arange(1, 31, dtype=np.int64), vectors
    )
    index.add_many(np.array([0]), ["subject0"], np.array([100]), vectors[:1])  # no change
    members = {pk: vectors[subjects == pk] for pk in range(6)}
    members[0] = np.vstack([vectors[:1], members[0]])
    assert index.sample_count == 31
    assert_matches(index, members, unit(rng, 4), 6)

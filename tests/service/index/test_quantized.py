"""8-bit codes with exact re-ranking (`faiss://?storage=sq8`) against models.scoring."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.scoring import SubjectScorer, decide
from service.index import IndexConfigError, IndexContents, open_index, quantized
from service.index.faiss import FaissBackend
from service.index.quantized import (
    QuantizedBackend,
    QuantizedSubjectIndex,
    RowFile,
    SubjectNames,
)

DIM = 48


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clustered_gallery(
    rng: np.random.Generator, clusters: int, per_cluster: int, spread: float = 0.03
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, subject numbers, cluster centres): subjects of a cluster are near-identical,
    so a probe near a centre has many subjects within the quantisation error of each other."""
    centres = unit(rng.standard_normal((clusters, DIM)))
    vectors, subjects = [], []
    for c in range(clusters):
        for s in range(per_cluster):
            count = 1 + (c + s) % 4
            base = centres[c] + spread * rng.standard_normal(DIM)
            vectors.append(unit(base + 0.3 * spread * rng.standard_normal((count, DIM))))
            subjects += [c * per_cluster + s] * count
    return np.vstack(vectors), np.array(subjects, dtype=np.int64), centres


def name(pk: int) -> str:
    return f"subject-{pk:05d}"


def build(
    scoring: str, vectors: np.ndarray, subjects: np.ndarray, **options: object
) -> QuantizedSubjectIndex:
    contents = IndexContents(
        np.arange(1, len(vectors) + 1, dtype=np.int64),
        subjects,
        vectors,
        {int(pk): name(int(pk)) for pk in np.unique(subjects)},
    )
    return QuantizedSubjectIndex.from_contents(DIM, scoring, contents, **options)  # type: ignore[arg-type]


def assert_same_as_scorer(
    index: QuantizedSubjectIndex,
    vectors: np.ndarray,
    subjects: np.ndarray,
    probes: np.ndarray,
    scoring: str,
    top_k: int = 5,
) -> None:
    scorer = SubjectScorer(vectors, [name(int(pk)) for pk in subjects], scoring)  # type: ignore[arg-type]
    labels, scores = scorer.top_k(probes, top_k)
    rows = index.search(probes, top_k)
    top1, _ = index.top1_scores(probes)
    thresholds = np.quantile(scores[:, 0], [0.1, 0.5, 0.9])
    for row, expected_labels, expected_scores, first in zip(
        rows, labels, scores, top1, strict=True
    ):
        assert [c.subject_id for c in row] == expected_labels.tolist()
        np.testing.assert_allclose([c.score for c in row], expected_scores, atol=1e-6, rtol=0)
        assert abs(first - expected_scores[0]) <= 1e-6
        assert first == row[0].score  # calibration scores a probe exactly as identify does
        for threshold in thresholds:
            assert decide(row[0].score, threshold) == decide(float(expected_scores[0]), threshold)


@pytest.mark.parametrize("first_k", [4, 256])
@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_clustered_near_ties_give_the_exact_answer(
    scoring: str, first_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small first search widens (several rounds); a large one takes all in one.
    monkeypatch.setattr(quantized, "_FIRST_K", first_k)
    rng = np.random.default_rng(11)
    vectors, subjects, centres = clustered_gallery(rng, clusters=12, per_cluster=25)
    index = build(scoring, vectors, subjects)
    # Near ties: many subjects of the probed cluster score within the quantisation error.
    probes = unit(np.repeat(centres, 3, axis=0) + 0.01 * rng.standard_normal((36, DIM)))
    assert index.error_bound(probes[:1])[0] > 1e-3  # the codes alone would misrank them
    probes = np.vstack([probes, unit(rng.standard_normal((10, DIM)))])
    assert_same_as_scorer(index, vectors, subjects, probes, scoring, top_k=5)
    assert_same_as_scorer(index, vectors, subjects, probes, scoring, top_k=1)
    assert index.sample_count == len(vectors)
    assert index.subject_count == len(np.unique(subjects))


@pytest.mark.parametrize("first_k", [8, 256])
def test_subjects_with_many_close_samples_give_the_exact_answer(
    first_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-ranking first scores the rows down to the k-th subject's best exactly, then
    everything within the error bound of the k-th exact subject score. Here a few subjects
    own many samples that all score near the top (the rows before the k-th subject are many)
    and the rest of the cluster is within the quantisation error of them."""
    monkeypatch.setattr(quantized, "_FIRST_K", first_k)
    rng = np.random.default_rng(17)
    centres = unit(rng.standard_normal((5, DIM)))
    vectors, subjects = [], []
    for c, centre in enumerate(centres):
        for s in range(30):
            count = 12 if s < 3 else 1 + s % 3  # three subjects with a dozen samples each
            vectors.append(unit(centre + 0.02 * rng.standard_normal((count, DIM))))
            subjects += [100 * c + s] * count
    gallery, pks = np.vstack(vectors), np.array(subjects, dtype=np.int64)
    index = build("max", gallery, pks)
    probes = unit(np.repeat(centres, 4, axis=0) + 0.005 * rng.standard_normal((20, DIM)))
    assert index.error_bound(probes[:1])[0] > 1e-3
    for top_k in (1, 3, 5, 12):
        assert_same_as_scorer(index, gallery, pks, probes, "max", top_k=top_k)


def test_approximate_scores_stay_within_the_bound() -> None:
    """The bound the re-ranking relies on, checked on the codes themselves."""
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((2000, DIM)))
    index = build("max", vectors, np.arange(2000, dtype=np.int64))
    probes = unit(rng.standard_normal((20, DIM)))
    approximate, labels = index._codes.search(probes, 2000)
    exact = np.take_along_axis(probes @ vectors.T, labels, axis=1)
    bounds = index.error_bound(probes)
    assert (np.abs(approximate - exact) <= bounds[:, None]).all()
    assert (np.abs(approximate - exact).max(axis=1) > 0.05 * bounds).all()  # not vacuous


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_mutations_keep_search_exact(scoring: str, tmp_path: Path) -> None:
    """Adds (past the growth rebuild), removals (past the compaction), vectors outside the
    trained range, subject removal: after each, the same answers as a scorer of what is left."""
    rng = np.random.default_rng(5)
    vectors, subjects, centres = clustered_gallery(rng, clusters=6, per_cluster=20)
    index = build(scoring, vectors[:50], subjects[:50], directory=tmp_path)
    held = {i + 1: (int(subjects[i]), vectors[i]) for i in range(50)}
    probes = unit(np.vstack([centres, rng.standard_normal((6, DIM))]))

    def check() -> None:
        ids = sorted(held)
        gallery = np.stack([held[i][1] for i in ids])
        pks = np.array([held[i][0] for i in ids])
        assert_same_as_scorer(index, gallery, pks, probes, scoring, top_k=4)
        assert index.sample_count == len(held)

    for start in range(50, len(vectors), 37):  # grows far past what it was trained on
        stop = min(start + 37, len(vectors))
        for pk in np.unique(subjects[start:stop]).tolist():
            rows = np.flatnonzero(subjects[start:stop] == pk) + start
            index.add_samples(pk, name(pk), rows + 1, vectors[rows])
            held.update({int(r) + 1: (pk, vectors[r]) for r in rows})
    check()
    # A direction far outside the trained ranges: clipped codes, a wider bound, still exact.
    outlier = np.zeros((1, DIM), dtype=np.float32)
    outlier[0, 0] = 1.0
    index.add_samples(9999, name(9999), np.array([100_000]), outlier)
    held[100_000] = (9999, outlier[0])
    check()
    version = index.vectors_version
    removed = [i for i in sorted(held) if i % 3 == 0]  # a third: compaction rebuild
    index.remove_samples(np.array(removed))
    for i in removed:
        del held[i]
    assert index.vectors_version == version + 1
    check()
    victim = held[min(held)][0]
    victim_ids = [i for i, (pk, _) in held.items() if pk == victim]
    index.remove_subject(victim, np.array(victim_ids))
    for i in victim_ids:
        del held[i]
    check()
    assert index.subject_scores(probes, name(victim)) is None
    survivor = held[max(held)][0]
    members = np.stack([v for pk, v in held.values() if pk == survivor])
    expected = probes @ members.T
    if scoring == "max":
        np.testing.assert_allclose(
            index.subject_scores(probes, name(survivor)), expected.max(1), atol=1e-6
        )
    index.add_samples(survivor, name(survivor), np.array([min(held)]), members[:1])  # a repeat
    assert index.vectors_version == version + 2


def test_empty_index_and_subjects_without_samples() -> None:
    index = QuantizedSubjectIndex(DIM, "max")
    probes = unit(np.random.default_rng(0).standard_normal((2, DIM)))
    assert index.search(probes, 3) == [[], []]
    assert np.isneginf(index.top1_scores(probes)[0]).all()
    index.set_subject(7, "nobody")
    assert index.subject_count == 1 and index.vectors_version == 0
    assert index.subject_scores(probes, "nobody") is None
    index.add_samples(7, "nobody", np.array([1]), probes[:1])
    [[candidate]] = index.search(probes[:1], 3)
    assert candidate.subject_id == "nobody" and abs(candidate.score - 1.0) < 1e-6


def test_ivf_visiting_every_list_is_exact_and_fewer_lists_rerank_what_they_visit() -> None:
    rng = np.random.default_rng(8)
    vectors, subjects, centres = clustered_gallery(rng, clusters=16, per_cluster=20)
    probes = unit(np.vstack([centres, rng.standard_normal((8, DIM))]))
    everything = build("max", vectors, subjects, ivf_lists=8, nprobe=8)
    assert_same_as_scorer(everything, vectors, subjects, probes, "max")
    narrow = build("max", vectors, subjects, ivf_lists=8, nprobe=1)
    scorer = SubjectScorer(vectors, [name(int(pk)) for pk in subjects], "max")
    all_scores = scorer.scores(probes)
    columns = {label: i for i, label in enumerate(scorer.subjects.tolist())}
    for p, row in enumerate(narrow.search(probes, 5)):
        for candidate in row:  # whatever it finds carries its exact score
            assert abs(candidate.score - all_scores[p, columns[candidate.subject_id]]) <= 1e-6


def test_ivf_calibration_searches_what_identify_searches() -> None:
    """With few lists visited, the top-1 scores the calibrator gets are identify's top-1
    scores, misses included: the threshold is calibrated on what is actually searched."""
    rng = np.random.default_rng(9)
    vectors, subjects, _ = clustered_gallery(rng, clusters=16, per_cluster=10)
    narrow = build("max", vectors, subjects, ivf_lists=16, nprobe=1)
    calibration = unit(rng.standard_normal((300, DIM)))
    top1, _ = narrow.top1_scores(calibration)
    searched = [row[0].score for row in narrow.search(calibration, 1)]
    assert top1.tolist() == searched
    exact = SubjectScorer(vectors, subjects).scores(calibration).max(axis=1)
    assert (top1 <= exact + 1e-6).all() and (top1 < exact - 1e-6).any()  # it does miss


def test_row_file_round_trip(tmp_path: Path) -> None:
    rows = RowFile(4, tmp_path / "vectors")
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    assert rows.append(data[:3]) == 0 and rows.append(data[3:]) == 3
    np.testing.assert_array_equal(rows.read(np.array([9, 0, 4])), data[[9, 0, 4]])
    np.testing.assert_array_equal(rows.read_range(2, 6), data[2:6])
    assert rows.path is not None and rows.path.parent == tmp_path / "vectors"
    rows.close()
    assert list((tmp_path / "vectors").iterdir()) == []  # removed with its RowFile
    kept = RowFile(4, tmp_path / "vectors")
    kept.append(data)
    kept.keep()
    del kept  # a snapshot refers to it: it stays
    [path] = (tmp_path / "vectors").iterdir()
    reopened = RowFile(4, path=path, rows=6)  # rows after a snapshot's count are cut off
    assert reopened.rows == 6 and path.stat().st_size == 6 * 16
    np.testing.assert_array_equal(reopened.read_range(0, 6), data[:6])
    reopened.close()
    assert not path.exists()


def test_subject_names_against_a_dictionary() -> None:
    rng = np.random.default_rng(2)
    reference = {pk: f"name-{pk}" for pk in range(3000)}
    names = SubjectNames(dict(reference))
    for step in range(2500):  # enough changes to fold the overlay into the arrays
        pk = int(rng.integers(0, 4000))
        if step % 3 == 0:
            names.remove(pk)
            reference.pop(pk, None)
        else:
            names.set(pk, f"renamed-{pk}-{step % 5}")
            reference[pk] = f"renamed-{pk}-{step % 5}"
    assert len(names) == len(reference)
    assert dict(names.items()) == reference
    for pk in range(4000):
        assert names.name(pk) == reference.get(pk)
        if pk in reference:
            assert names.pk(reference[pk]) == pk
    assert names.pk("name-999999") is None


def test_index_url_options(tmp_path: Path) -> None:
    assert isinstance(open_index("faiss://"), FaissBackend)
    assert isinstance(open_index("faiss://?storage=float32"), FaissBackend)
    backend = open_index("faiss://?storage=sq8&ivf=64&nprobe=4", index_dir=tmp_path / "index")
    assert isinstance(backend, QuantizedBackend)
    assert (backend.ivf_lists, backend.nprobe, backend.directory) == (64, 4, tmp_path / "index")
    assert not backend.merge_searches  # an inverted file merges only when asked
    assert open_index("faiss://?storage=sq8").merge_searches  # flat codes share their scans
    assert not open_index("faiss://?storage=sq8&merge=0").merge_searches
    contents = IndexContents.empty(DIM)
    slotted = open_index("faiss://?storage=sq8&merge=1&slots=1").build(DIM, "max", contents)
    assert slotted.merge_searches and slotted.search_slots == 1
    for url, message in (
        ("faiss://?storage=fp8", "storage"),
        ("faiss://?storage=sq8&ivf=0", "ivf"),
        ("faiss://?storage=sq8&nprobe=x", "nprobe"),
        ("faiss://?ivf=16", "sq8"),
        ("faiss://?colour=blue", "colour"),
        ("faiss://?storage=sq8&merge=2", "merge"),
        ("faiss://?merge=1", "sq8"),
        ("faiss://?storage=sq8&slots=0", "slots"),
        ("faiss://?slots=1", "sq8"),
    ):
        with pytest.raises(IndexConfigError, match=message):
            open_index(url)


@pytest.mark.parametrize(("scoring", "ivf_lists"), [("max", 0), ("mean", 0), ("max", 4)])
def test_snapshot_round_trip_and_refusals(scoring: str, ivf_lists: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors, subjects, centres = clustered_gallery(rng, clusters=5, per_cluster=12)
    backend = QuantizedBackend(tmp_path, ivf_lists=ivf_lists, nprobe=4)
    contents = IndexContents(
        np.arange(1, len(vectors) + 1, dtype=np.int64),
        subjects,
        vectors,
        {int(pk): name(int(pk)) for pk in np.unique(subjects)},
    )
    index = backend.build(DIM, scoring, contents)
    index.set_subject(500, "no samples yet")
    attached = {"scores": np.array([0.5, -np.inf], dtype=np.float32), "names": np.array(["a"])}
    backend.save_snapshot(index, "g", "m@1", 7, attached)
    probes = unit(np.vstack([centres, rng.standard_normal((4, DIM))]))
    expected = index.search(probes, 5)
    assert backend.load_snapshot("g", "m@2", 7, DIM, scoring) is None  # another model
    snapshot = backend.load_snapshot("g", "m@1", 7, DIM, scoring)
    assert snapshot is not None
    assert snapshot.attached.keys() == attached.keys()
    for key, value in attached.items():
        np.testing.assert_array_equal(snapshot.attached[key], value)
    loaded = snapshot.index
    assert loaded.search(probes, 5) == expected
    assert (loaded.subject_count, loaded.sample_count) == (index.subject_count, index.sample_count)
    assert loaded.subject_scores(probes, "no samples yet") is None
    loaded.add_samples(500, "no samples yet", np.array([10_000]), probes[:1])
    assert loaded.search(probes[:1], 1)[0][0].subject_id == "no samples yet"
    backend.save_snapshot(loaded, "g", "m@1", 8)
    del index, loaded, snapshot  # the process ends: the files a snapshot refers to stay
    again = backend.load_snapshot("g", "m@1", 8, DIM, scoring)
    assert again is not None and again.attached == {}  # nothing attached this time
    assert again.index.search(probes[:1], 1)[0][0].subject_id == "no samples yet"
    del again
    assert backend.load_snapshot("g", "m@1", 9, DIM, scoring) is None  # stale: removed
    assert list(tmp_path.iterdir()) == []
    assert backend.load_snapshot("g", "m@1", 8, DIM, scoring) is None


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll a state change of other threads (bounded), never a fixed sleep."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_concurrent_searches_merge_into_one_and_each_gets_its_own_answer() -> None:
    rng = np.random.default_rng(12)
    vectors, subjects, centres = clustered_gallery(rng, clusters=8, per_cluster=15)
    index = build("max", vectors, subjects)
    probes = unit(np.vstack([centres, rng.standard_normal((8, DIM))]))
    expected = [index.search(probes[i : i + 2], 1 + i % 4) for i in range(8)]  # not merged
    index.merge_searches = True
    index.search_slots = 1
    before = index.searches
    results: dict[int, list] = {}

    def search(i: int) -> None:
        results[i] = index.search(probes[i : i + 2], 1 + i % 4)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(8)]
    with index._lock.write():  # the first caller leads but waits for the lock...
        for thread in threads:
            thread.start()
        wait_for(lambda: len(index._queue) == 7)  # ...while the others queue behind it
    for thread in threads:
        thread.join()
    assert index.searches == before + 1  # one FAISS search for all eight
    assert [results[i] for i in range(8)] == expected
    assert index.search(probes[:1], 3) == index.search(probes[:1], 3)  # alone: still answers


def test_a_failed_merged_search_fails_every_caller_and_the_next_ones_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(13)
    vectors, subjects, _ = clustered_gallery(rng, clusters=3, per_cluster=5)
    index = build("max", vectors, subjects)
    index.merge_searches = True
    index.search_slots = 1
    probes = unit(rng.standard_normal((4, DIM)))
    expected = index.search(probes, 2)

    def broken(queries: np.ndarray, top_k: int) -> list:
        raise RuntimeError("search failed")

    monkeypatch.setattr(index, "_search_pks", broken)
    errors: list[BaseException] = []

    def search(i: int) -> None:
        try:
            index.search(probes[i : i + 1], 2)
        except RuntimeError as error:
            errors.append(error)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    with index._lock.write():
        for thread in threads:
            thread.start()
        wait_for(lambda: len(index._queue) == 3)
    for thread in threads:
        thread.join()
    assert len(errors) == 4
    monkeypatch.undo()
    assert index.search(probes, 2) == expected


def test_a_damaged_snapshot_is_ignored_and_removed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    vectors, subjects, _ = clustered_gallery(rng, clusters=2, per_cluster=5)
    backend = QuantizedBackend(tmp_path)
    contents = IndexContents(
        np.arange(1, len(vectors) + 1, dtype=np.int64),
        subjects,
        vectors,
        {int(pk): name(int(pk)) for pk in np.unique(subjects)},
    )
    backend.save_snapshot(backend.build(DIM, "max", contents), "g", "m@1", 3)
    [arrays] = tmp_path.glob("*.npz")
    arrays.write_bytes(b"not a zip file")
    assert backend.load_snapshot("g", "m@1", 3, DIM, "max") is None
    assert list(tmp_path.glob("snapshot-*")) == []


def test_merged_searches_use_every_slot() -> None:
    """With two slots two searches run at once (one per core) and the rest merge behind."""
    rng = np.random.default_rng(14)
    vectors, subjects, _ = clustered_gallery(rng, clusters=4, per_cluster=6)
    index = build("max", vectors, subjects)
    probes = unit(rng.standard_normal((10, DIM)))
    expected = [index.search(probes[i : i + 1], 3) for i in range(10)]
    index.merge_searches = True
    index.search_slots = 2
    before = index.searches
    results: dict[int, list] = {}

    def search(i: int) -> None:
        results[i] = index.search(probes[i : i + 1], 3)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(10)]
    with index._lock.write():  # two leaders wait for the lock, eight queue
        for thread in threads:
            thread.start()
        wait_for(lambda: len(index._queue) == 8 and index._running == 2)
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(10)] == expected
    assert index.searches - before <= 3  # two leaders take what is queued; at most one more
    assert index._running == 0

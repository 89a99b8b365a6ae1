"""The shared scan of 8-bit codes (service/index/int8_scan.py) against integer arithmetic done
by hand, and the sq8 index's batched search against float32 brute force."""

from __future__ import annotations

import os

import numpy as np
import pytest

from models.scoring import SubjectScorer, decide
from service.index import IndexContents, int8_scan
from service.index.int8_scan import Int8Codes, top_rows
from service.index.quantized import QuantizedSubjectIndex


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 rows, the last growing from 16: many blocks on a small gallery."""
    monkeypatch.setattr(int8_scan, "BLOCK_ROWS", 64)
    monkeypatch.setattr(int8_scan, "_MIN_CAPACITY", 16)


@pytest.mark.parametrize("queries", [1, 3, 9])  # one row at a time, and one product
def test_products_equal_integer_arithmetic(small_blocks: None, queries: int) -> None:
    rng = np.random.default_rng(0)
    dim = 20
    codes = Int8Codes(dim, np.zeros(dim), np.ones(dim))
    batches = [rng.integers(0, 256, size=(n, dim), dtype=np.uint8) for n in (5, 60, 1, 130)]
    for batch in batches:  # appends that cross block boundaries and grow the last block
        codes.add_codes(batch)
    stored = np.vstack(batches).astype(np.int64)
    assert codes.ntotal == len(stored)
    probes = rng.standard_normal((queries, dim))
    constant, scale, products = codes.products(probes)
    # By hand: w = q * vdiff / 255 rounded to s * a, a in [-127, 127], against c - 128.
    w = probes / 255.0
    expected_scale = np.abs(w).max(axis=1) / 127
    a = np.clip(np.rint(w / expected_scale[:, None]), -127, 127).astype(np.int64)
    np.testing.assert_array_equal(products, a @ (stored - 128).T)
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-15)
    # The approximate scores are within query_error of the scores over the decoded codes.
    decoded = (stored + 0.5) / 255.0
    approximate = constant[:, None] + scale[:, None] * products
    gap = np.abs(approximate - probes @ decoded.T).max(axis=1)
    assert (gap <= codes.query_error(probes)).all()
    assert (gap > 0.01 * codes.query_error(probes)).all()  # the bound is not vacuous
    # A snapshot's blocks give the same products.
    again = Int8Codes.from_blocks(dim, codes.vmin, codes.vdiff, codes.blocks(), codes.max_code_norm)
    np.testing.assert_array_equal(again.products(probes)[2], products)
    # So do blocks split between threads (more threads than blocks too).
    for threads in (2, 3, 9):
        np.testing.assert_array_equal(codes.products(probes, threads)[2], products)


def test_a_failing_thread_fails_the_scan(
    small_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = Int8Codes(8, np.zeros(8), np.ones(8))
    codes.add_codes(np.full((200, 8), 7, dtype=np.uint8))
    scan_blocks = Int8Codes._scan_blocks

    def failing(self: Int8Codes, offset: np.ndarray, which: np.ndarray, out: np.ndarray) -> None:
        if 3 in which.tolist():  # a block the caller leaves to another thread
            raise MemoryError("no room")
        scan_blocks(self, offset, which, out)

    monkeypatch.setattr(Int8Codes, "_scan_blocks", failing)
    with pytest.raises(MemoryError):  # 4 blocks: the caller scans 0-1, a thread 2-3
        codes.products(np.ones((1, 8)), threads=2)
    monkeypatch.setattr(Int8Codes, "_scan_blocks", scan_blocks)
    assert (codes.products(np.ones((1, 8)), threads=2)[2] == 8 * 127 * (7 - 128)).all()


def test_row_sums_widen_past_int16() -> None:
    dim = 300  # 300 * 127 > 32767: a row of 255s sums past int16
    codes = Int8Codes(dim, np.zeros(dim), np.ones(dim))
    small = np.full((2, dim), 130, dtype=np.uint8)
    codes.add_codes(small)
    codes.add_codes(np.full((1, dim), 255, dtype=np.uint8))
    probe = np.ones((1, dim))
    _, _, products = codes.products(probe)
    assert products.tolist() == [[127 * 2 * dim, 127 * 2 * dim, 127 * 127 * dim]]


def test_top_rows_against_a_full_sort() -> None:
    rng = np.random.default_rng(1)
    for count, k in ((10, 3), (1000, 5), (5000, 256), (300, 300), (50, 80)):
        values = rng.integers(-50, 50, size=count).astype(np.int32)  # many ties
        top = top_rows(values, k)
        assert len(top) == min(k, count) and len(set(top.tolist())) == len(top)
        np.testing.assert_array_equal(values[top], np.sort(values)[::-1][: len(top)])


@pytest.mark.parametrize("scoring", ["max", "mean"])
def test_batched_search_is_exact(small_blocks: None, scoring: str) -> None:
    """Queries searched together (one shared scan) and one at a time give float32 brute force's
    top-k, scores within 1e-6 and the same decisions."""
    rng = np.random.default_rng(2)
    dim = 32
    centres = rng.standard_normal((6, dim))
    vectors = np.repeat(centres, 50, axis=0) + 0.05 * rng.standard_normal((300, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    subjects = np.arange(300, dtype=np.int64) // 2  # two samples per subject
    names = {int(pk): f"subject-{pk:04d}" for pk in np.unique(subjects)}
    contents = IndexContents(np.arange(1, 301, dtype=np.int64), subjects, vectors, names)
    index = QuantizedSubjectIndex.from_contents(dim, scoring, contents)
    assert len(index._codes._blocks) > 1
    probes = np.vstack([centres, rng.standard_normal((34, dim))])
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    scorer = SubjectScorer(vectors, [names[int(pk)] for pk in subjects], scoring)  # type: ignore[arg-type]
    labels, scores = scorer.top_k(probes, 5)
    together = index.search(probes, 5)
    alone = [index.search(probes[i : i + 1], 5)[0] for i in range(len(probes))]
    assert together == alone
    index.merge_searches = True  # merged scans are split between the cores' threads
    assert index._scan_threads() == max(1, os.cpu_count() or 1)
    assert index.search(probes, 5) == together
    thresholds = np.quantile(scores[:, 0], [0.1, 0.5, 0.9])
    for row, expected_labels, expected_scores in zip(together, labels, scores, strict=True):
        assert [c.subject_id for c in row] == expected_labels.tolist()
        np.testing.assert_allclose([c.score for c in row], expected_scores, atol=1e-6, rtol=0)
        for threshold in thresholds:
            assert decide(row[0].score, threshold) == decide(float(expected_scores[0]), threshold)

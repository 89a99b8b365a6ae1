"""check_embeddings: each embedding usable (normalised by models.scoring's rule) or rejected
with its reason, the same whether a batch is all usable (checked as one array) or mixed
(checked one by one)."""

from __future__ import annotations

import numpy as np

from service.core.embedder import check_embeddings


def test_a_usable_embedding_is_normalised_and_kept_as_sent() -> None:
    checked = check_embeddings([[3.0, 4.0], [0.0, -2.0]], 2)
    assert checked.rejections == [None, None]
    np.testing.assert_allclose(checked.unit, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)
    assert checked.unit.dtype == np.float32
    np.testing.assert_array_equal(checked.raw, np.float32([[3.0, 4.0], [0.0, -2.0]]))


def test_usable_rows_are_the_same_alone_and_beside_unusable_ones() -> None:
    good = np.random.default_rng(0).standard_normal((6, 8)).tolist()
    alone = check_embeddings(good, 8)
    unusable = [[0.0] * 8, [1.0] * 7, [float("nan")] + [1.0] * 7, "x", [[1.0] * 8]]
    mixed = check_embeddings([good[0], *unusable, *good[1:]], 8)
    rows = [0, *range(len(unusable) + 1, len(unusable) + 6)]
    np.testing.assert_array_equal(mixed.unit[rows], alone.unit)
    np.testing.assert_array_equal(mixed.raw[rows], alone.raw)
    assert alone.rejections == [None] * 6
    assert [mixed.rejections[i] for i in rows] == [None] * 6
    assert mixed.rejections[1 : len(unusable) + 1] == [
        "embedding is all zeros (or its norm overflows) and cannot be normalised",
        "embedding has dimension 7; the gallery's model expects 8",
        "embedding is not finite (NaN or infinite values)",
        "embedding must be a list of numbers",
        "embedding must be a flat list of numbers",
    ]
    assert not mixed.unit[1 : len(unusable) + 1].any()  # rejected rows stay zero


def test_an_overflowing_norm_is_rejected_in_a_batch_of_one() -> None:
    checked = check_embeddings([[1e200, 1e200]], 2)
    assert checked.rejections == [
        "embedding is all zeros (or its norm overflows) and cannot be normalised"
    ]

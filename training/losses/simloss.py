"""SimLoss (Kobs et al. 2020): cross-entropy that credits similar classes.

Per sample of class y, with p = softmax(z) and a class-similarity matrix W [C, C]:

    -log Σ_c W[y, c]·p_c  =  -logsumexp_c(log W[y, c] + log_softmax(z)_c)

computed in log space from logits (W[y, c] = 0 gives log 0 = -inf, which logsumexp
handles; the unit diagonal keeps at least one finite term). W = I is cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ClassificationLoss, compute_dtype


def _as_square_matrix(matrix: Tensor, name: str) -> Tensor:
    matrix = torch.as_tensor(matrix)
    if not matrix.dtype.is_floating_point:
        matrix = matrix.to(torch.float32)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a square [C, C] matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{name} must be finite")
    return matrix


def check_similarity(similarity: Tensor) -> Tensor:
    """Validate a SimLoss matrix: square, finite, entries in [0, 1], unit diagonal."""
    similarity = _as_square_matrix(similarity, "similarity")
    if bool((similarity < 0).any()) or bool((similarity > 1).any()):
        raise ValueError("similarity entries must be in [0, 1]")
    if not bool((similarity.diagonal() == 1).all()):
        raise ValueError("similarity must have a unit diagonal (W[i, i] = 1)")
    return similarity


def ordinal_similarity(num_classes: int, ratio: float) -> Tensor:
    """``W[i, j] = ratio^|i - j|`` for ordered classes, 0 <= ratio < 1; float32 [C, C]."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    index = torch.arange(num_classes, dtype=torch.float64)
    distance = (index[:, None] - index[None, :]).abs()
    return torch.pow(torch.tensor(ratio, dtype=torch.float64), distance).to(torch.float32)


def similarity_from_matrix(similarity: Tensor, lower_bound: float) -> Tensor:
    """``W = max(0, (S - b) / (1 - b))`` with unit diagonal, from similarities S in [-1, 1].

    Similarities below the lower bound b (0 <= b < 1) count as unrelated (0).
    """
    similarity = _as_square_matrix(similarity, "similarity")
    lower_bound = float(lower_bound)
    if not (0.0 <= lower_bound < 1.0 and math.isfinite(lower_bound)):
        raise ValueError(f"lower_bound must be in [0, 1), got {lower_bound}")
    if bool((similarity < -1).any()) or bool((similarity > 1).any()):
        raise ValueError("similarity entries must be in [-1, 1] (e.g. cosine similarities)")
    matrix = ((similarity - lower_bound) / (1.0 - lower_bound)).clamp_min(0.0)
    matrix.fill_diagonal_(1.0)
    return matrix


class SimLoss(ClassificationLoss):
    """SimLoss on logits [N, C] with the class-similarity matrix W (no negative samples).

    Args:
        similarity: W [C, C], entries in [0, 1], unit diagonal (see :func:`ordinal_similarity`
            and :func:`similarity_from_matrix`).
        reduction, weight: as :class:`EntropicOpenSetLoss`.
    """

    supports_negatives = False

    def __init__(
        self, similarity: Tensor, reduction: str = "mean", weight: Tensor | None = None
    ) -> None:
        similarity = check_similarity(similarity)
        super().__init__(similarity.shape[0], reduction, weight)
        self.register_buffer("similarity", similarity.clone())
        self.register_buffer("log_similarity", similarity.log())

    def forward(
        self, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        _, weights = self._check(logits, targets, sample_weight)
        dtype = compute_dtype(logits.dtype)
        log_probabilities = torch.log_softmax(logits.to(dtype), dim=1)
        log_similarity = self.log_similarity.to(device=logits.device, dtype=dtype)[targets]
        per_sample = -torch.logsumexp(log_similarity + log_probabilities, dim=1)
        return self._reduce(per_sample, weights, logits.dtype)

"""ObjectoSphere loss (Dhamija et al. 2018) on the feature vector f that feeds the logits.

known sample:    max(0, ξ - ||f||)²   (push known magnitudes out past the ring ξ)
negative sample: ||f||²               (pull negatives to the origin)

The training objective of the paper is ``EOS(z) + λ·ObjectoSphere(f)``:
:class:`EntropicObjectoSphereLoss` computes both in one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    BaseLoss,
    ClassificationLoss,
    check_float_matrix,
    check_sample_weight,
    check_targets,
    compute_dtype,
)
from .functional import entropic_nll


def _check_non_negative(value: float, name: str) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def objectosphere_per_sample(features: Tensor, known: Tensor, min_magnitude: float) -> Tensor:
    """Per-sample ObjectoSphere term; the gradient is finite everywhere, also at f = 0."""
    # torch's norm backward is f/||f|| with 0 at f = 0 (not 0/0): finite everywhere. For
    # negatives d||f||²/df = 2f, which is 0 at f = 0 as well, so the one norm serves both.
    norm = torch.linalg.vector_norm(features, dim=1)
    known_term = (min_magnitude - norm).clamp_min(0.0).square()
    return torch.where(known, known_term, norm.square())


class ObjectoSphereLoss(BaseLoss):
    """ObjectoSphere loss on features [N, D]; targets < 0 are negative samples.

    Args:
        min_magnitude: ξ, the ring known samples must reach (default 10, as ``openloss``;
            Dhamija et al. 2018 use ξ=50 with λ=1e-4, Vareto et al. 2024 ξ=1 with λ=0.01).
        reduction: ``"mean"`` (weighted mean Σ w·l / Σ w with ``sample_weight``), ``"sum"``,
            ``"none"``.
    """

    def __init__(self, min_magnitude: float = 10.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.min_magnitude = _check_non_negative(min_magnitude, "min_magnitude")

    def forward(
        self, features: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        check_float_matrix(features, "features")
        known = check_targets(targets, features, num_classes=None, allow_negatives=True)
        sample_weight = check_sample_weight(sample_weight, features)
        per_sample = objectosphere_per_sample(
            features.to(compute_dtype(features.dtype)), known, self.min_magnitude
        )
        return self._reduce(per_sample, sample_weight, features.dtype)

    def extra_repr(self) -> str:
        return f"min_magnitude={self.min_magnitude}, " + super().extra_repr()


class EntropicObjectoSphereLoss(ClassificationLoss):
    """``EOS(logits) + λ·ObjectoSphere(features)`` per sample, reduced once.

    Args:
        num_classes: C, the number of known classes (columns of the logits).
        min_magnitude: ξ (default 10, as ``openloss``).
        lambda_: λ (default 0.01, the value of Vareto et al. 2024; Dhamija et al. 2018 use
            1e-4 with ξ=50).
        reduction, weight, negative_weight: as :class:`EntropicOpenSetLoss`; the weights
            apply to the sum of both terms of a sample.

    ``forward(logits [N, C], features [N, D], targets [N], sample_weight=None)``.
    """

    def __init__(
        self,
        num_classes: int,
        min_magnitude: float = 10.0,
        lambda_: float = 0.01,
        reduction: str = "mean",
        weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        super().__init__(num_classes, reduction, weight, negative_weight)
        self.min_magnitude = _check_non_negative(min_magnitude, "min_magnitude")
        self.lambda_ = _check_non_negative(lambda_, "lambda_")

    def forward(
        self,
        logits: Tensor,
        features: Tensor,
        targets: Tensor,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        known, weights = self._check(logits, targets, sample_weight)
        check_float_matrix(features, "features")
        if features.shape[0] != logits.shape[0] or features.device != logits.device:
            raise ValueError(
                f"features ({features.shape[0]} rows on {features.device}) must match the "
                f"logits ({logits.shape[0]} rows on {logits.device})"
            )
        entropic = entropic_nll(logits.to(compute_dtype(logits.dtype)), targets, known)
        sphere = objectosphere_per_sample(
            features.to(compute_dtype(features.dtype)), known, self.min_magnitude
        )
        per_sample = entropic + self.lambda_ * sphere.to(entropic.dtype)
        return self._reduce(per_sample, weights, logits.dtype)

    def extra_repr(self) -> str:
        return (
            f"min_magnitude={self.min_magnitude}, lambda_={self.lambda_}, " + super().extra_repr()
        )

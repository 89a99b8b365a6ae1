"""Cosine-margin classification heads: ArcFace (Deng et al. 2019), CosFace (Wang et al. 2018).

Both L2-normalise the embeddings e and the rows of their own class-weight matrix W [C, D]
and compute the scaled cosines ``s·cos θ_j``; only the target logit changes:

- ArcFace: ``s·cos(θ_y + m)``, and past ``θ_y + m > π`` the monotone fallback
  ``s·(cos θ_y - m·sin m)``;
- CosFace: ``s·(cos θ_y - m)``.

A negative sample (label < 0, our extension) gets the entropic uniform target over the
scaled cosines, with no margin. The margin is applied to a [N] vector inside the fused
entropic cross-entropy (see :mod:`.functional`): the [N, C] cosine matrix is never copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClassificationLoss, check_float_matrix
from .functional import TargetTransform, entropic_nll, shift_target


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos' fixed scale ``s = sqrt(2)·ln(C - 1)`` (Zhang et al., CVPR 2019).

    The scale at which a sample at θ = π/4 from its class centre, with the other C - 1 class
    centres orthogonal to it (logit 0), gets target probability 1/2: the softmax is steepest
    at that angle instead of saturated everywhere, as it is with s = 64 for a few classes.
    For C = 2 the formula gives 0; ``C - 1`` is floored at 2 there.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return math.sqrt(2.0) * math.log(max(num_classes - 1, 2))


class CosineMarginHead(ClassificationLoss):
    """Shared part of the margin heads: parameter, validation, cosines, reduction.

    Args:
        num_classes: C. embedding_dim: D. margin: m. scale: s (> 0).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        class_weight: optional per-class loss weight [C] (``nn.CrossEntropyLoss`` semantics).
        negative_weight: weight of a negative sample when weights are in use.

    Owns ``weight`` [C, D] (an ``nn.Parameter``): add ``loss.parameters()`` to the optimizer.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float,
        scale: float,
        reduction: str = "mean",
        class_weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        super().__init__(num_classes, reduction, class_weight, negative_weight)
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int):
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        scale = float(scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be finite and > 0, got {scale}")
        self.embedding_dim = embedding_dim
        self.margin = float(margin)
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight)  # only the direction of each row matters

    def _target_transform(self) -> TargetTransform | None:
        raise NotImplementedError

    def _scaled_cosines(self, embeddings: Tensor) -> Tensor:
        dtype = torch.promote_types(
            torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32
        )
        unit_embeddings = F.normalize(embeddings.to(dtype), dim=1)
        unit_weight = F.normalize(self.weight.to(dtype), dim=1)
        # Scale the [N, D] side, not the [N, C] product.
        return (unit_embeddings * self.scale) @ unit_weight.T

    def logits(self, embeddings: Tensor) -> Tensor:
        """Inference logits: ``s·cos θ_j`` for every class, no margin, [N, C]."""
        check_float_matrix(embeddings, "embeddings", self.embedding_dim)
        return self._scaled_cosines(embeddings).to(embeddings.dtype)

    def forward(
        self, embeddings: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        known, weights = self._check(
            embeddings, targets, sample_weight, "embeddings", self.embedding_dim
        )
        scaled_cosines = self._scaled_cosines(embeddings)
        # The matmul output is private to this call (no autograd node saved it), so the
        # fused loss may write the margin-adjusted target column into it.
        per_sample = entropic_nll(
            scaled_cosines, targets, known, self._target_transform(), may_overwrite=True
        )
        return self._reduce(per_sample, weights, embeddings.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin}, scale={self.scale}, reduction={self.reduction!r}"
        )


def arcface_target(margin: float, scale: float) -> TargetTransform:
    """ψ(s·c) = s·cos(θ + m) with c = cos θ, and its exact derivative dψ/du = dφ/dc.

    No acos: ``cos(θ+m) = c·cos m - sin θ·sin m`` with ``sin θ = sqrt(1 - c²)``, so
    ``dφ/dc = cos m + c·sin m / sin θ``. sin θ is clamped below at sqrt(eps) of the dtype:
    the derivative is exact wherever sin²θ > eps and stays finite at c = ±1 (where the
    gradient with respect to the embedding vanishes anyway, dc/de = 0). Past θ + m > π,
    i.e. c < cos(π - m), the fallback ``c - m·sin m`` (derivative 1) keeps φ monotone.
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold = math.cos(math.pi - margin)
    fallback_shift = margin * sin_m

    def transform(target_logit: Tensor) -> tuple[Tensor, Tensor]:
        cosine = (target_logit / scale).clamp(-1.0, 1.0)
        eps = torch.finfo(cosine.dtype).eps
        sine = (1.0 - cosine.square()).clamp_min(eps).sqrt()
        inside = cosine > threshold
        value = torch.where(inside, cosine * cos_m - sine * sin_m, cosine - fallback_shift)
        derivative = torch.where(inside, cos_m + cosine * (sin_m / sine), 1.0)
        return value * scale, derivative

    return transform


class ArcFaceLoss(CosineMarginHead):
    """Additive angular margin: target logit ``s·cos(θ_y + m)`` (m in radians).

    Defaults m=0.5, s=64 as in Deng et al. 2019 and insightface (pytorch-metric-learning
    takes the margin in degrees: 28.6 ≈ 0.5 rad). ``forward(embeddings [N, D], targets [N])``;
    label < 0 = negative sample (uniform target, no margin); ``logits(embeddings)`` for
    inference.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        scale: float = 64.0,
        reduction: str = "mean",
        class_weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        if not (0.0 <= float(margin) < math.pi / 2):
            raise ValueError(f"ArcFace margin must be in [0, π/2) radians, got {margin}")
        super().__init__(
            num_classes, embedding_dim, margin, scale, reduction, class_weight, negative_weight
        )

    def _target_transform(self) -> TargetTransform | None:
        return arcface_target(self.margin, self.scale) if self.margin != 0 else None


class CosFaceLoss(CosineMarginHead):
    """Additive cosine margin: target logit ``s·(cos θ_y - m)``.

    Defaults m=0.35, s=64 (Wang et al. 2018 use s=64 and report m=0.35 as best;
    pytorch-metric-learning uses the same). Arguments and methods as :class:`ArcFaceLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.35,
        scale: float = 64.0,
        reduction: str = "mean",
        class_weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        if not (0.0 <= float(margin) <= 2.0):
            raise ValueError(f"CosFace margin must be in [0, 2], got {margin}")
        super().__init__(
            num_classes, embedding_dim, margin, scale, reduction, class_weight, negative_weight
        )

    def _target_transform(self) -> TargetTransform | None:
        return shift_target(self.margin * self.scale) if self.margin != 0 else None

"""Entropic Open-Set loss (Dhamija et al. 2018) and Maximal Entropy Loss (Vareto et al.).

known sample (y >= 0):     -log softmax(z)_y             (MEL: z_y lowered by m first)
negative sample (y < 0):   -(1/C) Σ_c log softmax(z)_c   (maximal entropy target, no margin)
"""

from __future__ import annotations

from torch import Tensor

from .base import ClassificationLoss, compute_dtype
from .functional import entropic_nll, shift_target


class EntropicOpenSetLoss(ClassificationLoss):
    """Entropic Open-Set loss: cross-entropy for knowns, uniform target for negatives.

    Args:
        num_classes: C, the number of known classes (the logits have C columns).
        reduction: ``"mean"`` (weighted mean when weighted), ``"sum"`` or ``"none"``.
        weight: optional per-class weight [C], ``nn.CrossEntropyLoss`` semantics.
        negative_weight: weight of a negative sample when weights are in use (default 1).

    ``forward(logits [N, C], targets [N], sample_weight [N] | None)``; targets < 0 are
    negative samples. On an all-known batch this equals ``F.cross_entropy``.
    """

    @property
    def weight(self) -> Tensor | None:
        """The per-class weight (as ``nn.CrossEntropyLoss.weight``)."""
        return self.class_weight

    def forward(
        self, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        known, weights = self._check(logits, targets, sample_weight)
        per_sample = entropic_nll(logits.to(compute_dtype(logits.dtype)), targets, known)
        return self._reduce(per_sample, weights, logits.dtype)


class MaximalEntropyLoss(EntropicOpenSetLoss):
    """Maximal Entropy Loss: EOS with a margin m subtracted from the target logit.

    Known samples: ``-log softmax(z - m·e_y)_y``; negatives as in EOS (no margin). m=0 is
    EOS. Default m=0.35 as in the code of ``openloss`` 0.0.2 (its README says 0.5; the
    two papers use 0.3 and 0.40). Other arguments as
    :class:`EntropicOpenSetLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        margin: float = 0.35,
        reduction: str = "mean",
        weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        super().__init__(num_classes, reduction, weight, negative_weight)
        margin = float(margin)
        if margin != margin or abs(margin) == float("inf"):
            raise ValueError(f"margin must be a finite number, got {margin}")
        self.margin = margin

    def forward(
        self, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        known, weights = self._check(logits, targets, sample_weight)
        transform = shift_target(self.margin) if self.margin != 0 else None
        per_sample = entropic_nll(logits.to(compute_dtype(logits.dtype)), targets, known, transform)
        return self._reduce(per_sample, weights, logits.dtype)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, " + super().extra_repr()

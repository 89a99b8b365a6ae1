"""Class Anchor Clustering (Miller et al. 2021, WACV).

The network's C logits z are a point in R^C; class i has the anchor ``α·e_i``.
With distances ``d_j = ||z - anchor_j||₂`` the loss of a sample of class y is

    log(1 + Σ_{j≠y} exp(d_y - d_j)) + λ·d_y   (tuplet term + anchor term)

and the tuplet term equals cross-entropy on the logits -d. Prediction is ``argmin_j d_j``;
the open-set score is ``min_j d_j·(1 - softmin(d)_j)`` (higher = more unknown). For
evaluation the anchors are replaced by the class means of correctly classified training
logits (:meth:`CACLoss.set_anchors_from_class_means`).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .base import ClassificationLoss, check_float_matrix, check_targets, compute_dtype
from .functional import entropic_nll

# Squared distances below this are clamped: sqrt stays differentiable (gradient 0 there).
_MIN_SQUARED_DISTANCE = 1e-12


class CACLoss(ClassificationLoss):
    """Class Anchor Clustering loss on logits [N, C] (no negative samples).

    Args:
        num_classes: C (the logits have C columns, one anchor per class).
        alpha: α, the anchor magnitude (default 10, as the paper).
        lambda_: λ, weight of the anchor term (default 0.1, as the paper).
        reduction, weight: as :class:`EntropicOpenSetLoss`.

    The anchors are the buffer ``anchors`` [C, C] (saved in the state dict).
    """

    supports_negatives = False

    def __init__(
        self,
        num_classes: int,
        alpha: float = 10.0,
        lambda_: float = 0.1,
        reduction: str = "mean",
        weight: Tensor | None = None,
    ) -> None:
        super().__init__(num_classes, reduction, weight)
        alpha, lambda_ = float(alpha), float(lambda_)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and > 0, got {alpha}")
        if not (lambda_ >= 0 and math.isfinite(lambda_)):
            raise ValueError(f"lambda_ must be finite and >= 0, got {lambda_}")
        self.alpha = alpha
        self.lambda_ = lambda_
        self.register_buffer("anchors", alpha * torch.eye(num_classes))

    def reset_anchors(self) -> None:
        """Back to the training anchors ``α·e_i``."""
        self.anchors.copy_(self.alpha * torch.eye(self.num_classes))

    def _anchors_are_scaled_identity(self) -> bool:
        anchors = self.anchors
        return bool(
            (anchors.count_nonzero() == self.num_classes) & (anchors.diagonal() == self.alpha).all()
        )

    def _distances(self, logits: Tensor) -> Tensor:
        dtype = compute_dtype(logits.dtype)
        points = logits.to(dtype)
        anchors = self.anchors.to(device=logits.device, dtype=dtype)
        point_norms = points.square().sum(dim=1, keepdim=True)
        if self._anchors_are_scaled_identity():
            # Training anchors α·e_j: ||z - α e_j||² = ||z||² - 2α z_j + α², no matmul.
            squared = point_norms - (2.0 * self.alpha) * points + self.alpha**2
        else:
            squared = point_norms - 2.0 * points @ anchors.T + anchors.square().sum(dim=1)
        return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()

    def distances(self, logits: Tensor) -> Tensor:
        """Euclidean distances to the anchors, [N, C], in the dtype of the logits."""
        check_float_matrix(logits, "logits", self.num_classes)
        return self._distances(logits).to(logits.dtype)

    def predict(self, logits: Tensor) -> Tensor:
        """The nearest anchor's class, [N] int64."""
        return self.distances(logits).argmin(dim=1)

    def open_set_score(self, logits: Tensor) -> Tensor:
        """``min_j d_j·(1 - softmin(d)_j)``, [N]: higher means more likely unknown."""
        check_float_matrix(logits, "logits", self.num_classes)
        distances = self._distances(logits)
        scores = distances * (1.0 - torch.softmax(-distances, dim=1))
        return scores.amin(dim=1).to(logits.dtype)

    def forward(
        self, logits: Tensor, targets: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        known, weights = self._check(logits, targets, sample_weight)
        distances = self._distances(logits)
        tuplet = entropic_nll(-distances, targets, known)
        anchor = distances.gather(1, targets.unsqueeze(1)).squeeze(1)
        per_sample = tuplet + self.lambda_ * anchor
        return self._reduce(per_sample, weights, logits.dtype)

    @torch.no_grad()
    def set_anchors_from_class_means(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Replace each anchor by the mean logit of its correctly classified samples.

        ``logits`` [N, C] are training logits, ``targets`` [N] their classes. A class with no
        correctly classified sample keeps its anchor (with a warning). Returns the number of
        samples used per class, [C] int64.
        """
        check_float_matrix(logits, "logits", self.num_classes)
        check_targets(targets, logits, self.num_classes, allow_negatives=False)
        correct = self.predict(logits) == targets
        classes = targets[correct]
        points = logits[correct].to(self.anchors.dtype).to(self.anchors.device)
        classes = classes.to(self.anchors.device)
        sums = torch.zeros_like(self.anchors).index_add_(0, classes, points)
        counts = torch.bincount(classes, minlength=self.num_classes)
        has_samples = counts > 0
        if not bool(has_samples.all()):
            missing = torch.nonzero(~has_samples).flatten().tolist()
            warnings.warn(
                f"CACLoss: no correctly classified sample for classes {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''}; their anchors are unchanged",
                stacklevel=2,
            )
        means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        self.anchors.copy_(torch.where(has_samples.unsqueeze(1), means, self.anchors))
        return counts

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lambda_={self.lambda_}, " + super().extra_repr()

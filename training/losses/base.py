"""Conventions shared by every loss, enforced here and only here.

- ``reduction`` is one of ``"mean"``, ``"sum"``, ``"none"``; anything else is a ``ValueError``.
- Targets are a 1-D integer tensor on the inputs' device: a class index in ``[0, C)``, or any
  negative value for a *negative* sample ("known unknown"), where the loss supports them.
- ``weight`` (per class, shape ``[C]``) has the semantics of ``torch.nn.CrossEntropyLoss``:
  sample i counts with ``w[y_i]`` and ``"mean"`` divides by the sum of the weights, not by N.
  Negative samples count with ``negative_weight``; an optional ``sample_weight`` ``[N]``
  multiplies both. With no weights at all ``"mean"`` is the plain mean.
- Inputs may be float32, float64 or bfloat16 (float16 too). Half precision is computed in
  float32 and the result is cast back to the input dtype; float64 stays float64.
- Every check raises ``ValueError`` with a message that names the argument and the problem.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the arithmetic runs in: float32 at least, so that bf16 stays accurate."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float_matrix(tensor: Tensor, name: str, columns: int | None = None) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [N, C], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N=0)")
    if columns is not None and tensor.shape[1] != columns:
        raise ValueError(
            f"{name} has {tensor.shape[1]} columns but the loss was built for {columns} "
            f"(num_classes / embedding_dim mismatch)"
        )


def check_targets(
    targets: Tensor,
    reference: Tensor,
    num_classes: int | None,
    allow_negatives: bool,
) -> Tensor:
    """Validate targets against ``reference`` ([N, ...]) and return a boolean known-mask [N]."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype == torch.bool or targets.dtype.is_floating_point or targets.is_complex():
        raise ValueError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if targets.dim() != 1:
        raise ValueError(f"targets must have shape [N], got shape {tuple(targets.shape)}")
    if targets.shape[0] != reference.shape[0]:
        raise ValueError(
            f"targets has {targets.shape[0]} entries but the inputs have N={reference.shape[0]}"
        )
    if targets.device != reference.device:
        raise ValueError(
            f"targets are on {targets.device} but the inputs are on {reference.device}"
        )
    known = targets >= 0
    if num_classes is not None:
        too_large = targets >= num_classes
        if bool(too_large.any()):
            bad = int(targets[too_large][0])
            raise ValueError(
                f"target {bad} is out of range for num_classes={num_classes}: class indices "
                f"must be in [0, {num_classes}) (negative values mark negative samples)"
            )
    if not allow_negatives and not bool(known.all()):
        bad = int(targets[~known][0])
        raise ValueError(
            f"target {bad} is negative, but this loss has no negative samples: class indices "
            f"must be in [0, {num_classes})"
        )
    return known


def check_sample_weight(sample_weight: Tensor | None, reference: Tensor) -> Tensor | None:
    if sample_weight is None:
        return None
    if not isinstance(sample_weight, Tensor) or not sample_weight.dtype.is_floating_point:
        raise ValueError("sample_weight must be a floating-point tensor of shape [N]")
    if sample_weight.shape != (reference.shape[0],):
        raise ValueError(
            f"sample_weight must have shape [{reference.shape[0]}], "
            f"got {tuple(sample_weight.shape)}"
        )
    if sample_weight.device != reference.device:
        raise ValueError(
            f"sample_weight is on {sample_weight.device} but the inputs are on {reference.device}"
        )
    if not bool(torch.isfinite(sample_weight).all()) or bool((sample_weight < 0).any()):
        raise ValueError("sample_weight must be finite and non-negative")
    return sample_weight


def reduce_loss(per_sample: Tensor, weights: Tensor | None, reduction: str) -> Tensor:
    """Apply weights and the reduction; ``"mean"`` is the weighted mean Σ w·l / Σ w."""
    if weights is None:
        if reduction == "mean":
            return per_sample.mean()
        return per_sample.sum() if reduction == "sum" else per_sample
    weighted = per_sample * weights.to(per_sample.dtype)
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    denominator = weights.to(per_sample.dtype).sum()
    # All weights zero: the numerator is zero too; return it (0, with a graph) instead of NaN.
    return torch.where(denominator > 0, total / denominator.clamp_min(1e-30), total)


class BaseLoss(nn.Module):
    """Holds the reduction; subclasses compute a per-sample loss and call :meth:`_reduce`."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def _reduce(self, per_sample: Tensor, weights: Tensor | None, out_dtype: torch.dtype) -> Tensor:
        check_reduction(self.reduction)  # the attribute may have been changed after __init__
        return reduce_loss(per_sample, weights, self.reduction).to(out_dtype)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class ClassificationLoss(BaseLoss):
    """A loss over C known classes with optional per-class weights and negative samples.

    Args:
        num_classes: C, the number of *known* classes (negatives have no class of their own).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        weight: optional per-class weight ``[C]`` (``nn.CrossEntropyLoss`` semantics), kept
            in the buffer ``class_weight``.
        negative_weight: the weight of a negative sample when ``weight`` or ``sample_weight``
            is given (with neither, every sample counts 1).
    """

    supports_negatives: bool = True

    def __init__(
        self,
        num_classes: int,
        reduction: str = "mean",
        weight: Tensor | None = None,
        negative_weight: float = 1.0,
    ) -> None:
        super().__init__(reduction)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (negative_weight >= 0 and negative_weight < float("inf")):
            raise ValueError(f"negative_weight must be finite and >= 0, got {negative_weight}")
        self.num_classes = num_classes
        self.negative_weight = float(negative_weight)
        if weight is not None:
            weight = torch.as_tensor(weight)
            if not weight.dtype.is_floating_point or weight.shape != (num_classes,):
                raise ValueError(
                    f"weight must be a floating-point tensor of shape [{num_classes}] "
                    f"(one per class), got dtype {weight.dtype} shape {tuple(weight.shape)}"
                )
            if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
                raise ValueError("weight must be finite and non-negative")
        # Stored as ``class_weight``: margin heads own a ``weight`` parameter ([C, D]).
        self.register_buffer("class_weight", weight)

    def _check(
        self,
        logits: Tensor,
        targets: Tensor,
        sample_weight: Tensor | None,
        name: str = "logits",
        columns: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Validate inputs; return the known-mask and the effective per-sample weights."""
        check_float_matrix(logits, name, self.num_classes if columns is None else columns)
        known = check_targets(targets, logits, self.num_classes, self.supports_negatives)
        sample_weight = check_sample_weight(sample_weight, logits)
        return known, self._sample_weights(targets, known, sample_weight)

    def _sample_weights(
        self, targets: Tensor, known: Tensor, sample_weight: Tensor | None
    ) -> Tensor | None:
        if self.class_weight is None and sample_weight is None:
            return None
        if self.class_weight is None:
            weights = torch.where(known, 1.0, self.negative_weight).to(sample_weight.dtype)
        else:
            class_weight = self.class_weight.to(targets.device)
            weights = class_weight[targets.clamp_min(0)]
            weights = torch.where(known, weights, self.negative_weight)
        return weights if sample_weight is None else weights * sample_weight

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, reduction={self.reduction!r}, "
            f"weighted={self.class_weight is not None}, negative_weight={self.negative_weight}"
        )

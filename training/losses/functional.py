"""The fused entropic cross-entropy that EOS, MEL and the margin heads share.

Per sample, with z the logits (C columns) of one row:

- known (y >= 0): ``lse(z') - z'_y``, where z' equals z except the target logit, which is
  replaced by ``ψ(z_y)`` (ψ = identity for EOS, ``u - m`` for MEL and CosFace, the ArcFace
  angular margin for ArcFace);
- negative (y < 0): ``lse(z) - mean_c z_c`` = ``-(1/C) Σ_c log p_c`` (no margin).

One custom autograd function does the forward and the backward in a few passes over the
[N, C] matrix (one softmax, no one-hot or uniform target tensors): the gradient is
``g·(softmax(z') - target)`` with the target column scaled by ``ψ'(z_y)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# ψ: target logits [N] -> (replaced target logits [N], derivative dψ/du [N]).
TargetTransform = Callable[[Tensor], tuple[Tensor, Tensor]]


class _EntropicNLL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        logits: Tensor,
        targets: Tensor,
        known: Tensor,
        transform: TargetTransform | None,
        has_negatives: bool,
        may_overwrite: bool,
    ) -> Tensor:
        index = targets.clamp_min(0).unsqueeze(1)
        target_logit = logits.gather(1, index).squeeze(1)
        derivative = None
        work = logits
        if transform is not None:
            new_target, derivative = transform(target_logit)
            # Negatives keep their logits unchanged (no margin).
            new_target = torch.where(known, new_target, target_logit)
            # Only the target column changes: write it into the caller's private buffer
            # when allowed (margin heads), else into one copy.
            work = logits if may_overwrite else logits.clone()
            work.scatter_(1, index, new_target.unsqueeze(1))
            target_logit = new_target
        probabilities = torch.softmax(work, dim=1)
        # log Σ exp(z) = max z - log(max softmax): at the argmax softmax is exp(0)/S = 1/S,
        # so no second exp pass is needed and nothing underflows (max softmax >= 1/C).
        # (Two amax passes are ~3x faster than one max with indices.)
        log_sum_exp = work.amax(dim=1) - probabilities.amax(dim=1).log()
        loss = log_sum_exp - target_logit
        negative_rows = None
        if has_negatives:
            # Only the negative rows are read again (their logits are unchanged).
            negative_rows = torch.nonzero(~known).squeeze(1)
            negative_mean = work.index_select(0, negative_rows).mean(dim=1)
            loss = loss.index_put((negative_rows,), log_sum_exp[negative_rows] - negative_mean)
        ctx.save_for_backward(probabilities, index, known, derivative, negative_rows)
        ctx.num_classes = logits.shape[1]
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        probabilities, index, known, derivative, negative_rows = ctx.saved_tensors
        grad = probabilities * grad_loss.unsqueeze(1)  # g · softmax(z'): one pass
        known_grad = torch.where(known, grad_loss, 0.0)
        if derivative is None:
            grad.scatter_add_(1, index, -known_grad.unsqueeze(1))
        else:
            # Target column: g·(p'_y - 1)·ψ'(z_y) for knowns; negatives keep g·p_y.
            target_grad = grad.gather(1, index).squeeze(1)
            new_target_grad = (target_grad - known_grad) * torch.where(known, derivative, 1.0)
            grad.scatter_(1, index, new_target_grad.unsqueeze(1))
        if negative_rows is not None:
            # Uniform target on the negative rows only: subtract g/C from each of their entries.
            uniform = (grad_loss[negative_rows] / -ctx.num_classes).unsqueeze(1)
            grad.index_add_(0, negative_rows, uniform.expand(-1, ctx.num_classes))
        return grad, None, None, None, None, None


def entropic_nll(
    logits: Tensor,
    targets: Tensor,
    known: Tensor | None = None,
    transform: TargetTransform | None = None,
    may_overwrite: bool = False,
) -> Tensor:
    """Per-sample entropic open-set negative log-likelihood (see the module docstring).

    ``logits`` [N, C] float, ``targets`` [N] int (negative = negative sample); no validation
    here (the loss classes validate). ``transform`` ψ maps the target logits to the
    replaced ones and returns ψ' too. ``may_overwrite=True`` lets the function write the
    replaced target column into ``logits`` itself (only for a private intermediate that no
    other autograd node saved, e.g. a matmul output). Returns a tensor [N] in the dtype of
    ``logits``.
    """
    if known is None:
        known = targets >= 0
    has_negatives = not bool(known.all())
    return _EntropicNLL.apply(logits, targets, known, transform, has_negatives, may_overwrite)


def shift_target(margin: float) -> TargetTransform:
    """ψ(u) = u - margin (MEL, and CosFace on scaled cosines with margin·scale)."""

    def transform(target_logit: Tensor) -> tuple[Tensor, Tensor]:
        return target_logit - margin, torch.ones_like(target_logit)

    return transform

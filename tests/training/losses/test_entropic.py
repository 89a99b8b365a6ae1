"""EntropicOpenSetLoss and MaximalEntropyLoss: hand-worked values, equivalences, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.losses import EntropicOpenSetLoss, MaximalEntropyLoss


def numpy_entropic(logits: np.ndarray, targets: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Independent per-sample reference: known -log softmax(z - m e_y)_y, negative mean -log p."""
    out = []
    for row, label in zip(logits.astype(np.float64), targets, strict=True):
        row = row.copy()
        if label >= 0:
            row[label] -= margin
        log_p = row - np.log(np.exp(row - row.max()).sum()) - row.max()
        out.append(-log_p[label] if label >= 0 else -log_p.mean())
    return np.array(out)


def mixed_batch(n: int = 40, c: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=generator, dtype=torch.float64).mul(3).to(dtype)
    targets = torch.randint(-1, c, (n,), generator=generator)
    targets[:3] = torch.tensor([-1, 0, -7])  # both kinds, and "any negative value"
    return logits, targets


def test_hand_worked_values() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, -1, -1])
    per_sample = EntropicOpenSetLoss(2, reduction="none")(logits, targets)
    # p = (3/4, 1/4): known -log(3/4); negative -(log(3/4) + log(1/4))/2; uniform logits: log 2.
    expected = [math.log(4 / 3), (math.log(4 / 3) + math.log(4)) / 2, math.log(2)]
    torch.testing.assert_close(per_sample, torch.tensor(expected))
    # MEL with m = ln 3 lowers the target logit ln 3 to 0: both classes equal, loss log 2.
    mel = MaximalEntropyLoss(2, margin=math.log(3.0), reduction="none")(logits, targets)
    torch.testing.assert_close(mel, torch.tensor([math.log(2), expected[1], math.log(2)]))


@pytest.mark.parametrize("margin", [0.0, 0.35, 2.0])
def test_matches_numpy_formula(margin: float) -> None:
    logits, targets = mixed_batch()
    loss = MaximalEntropyLoss(6, margin=margin, reduction="none")(logits, targets)
    np.testing.assert_allclose(
        loss.numpy(), numpy_entropic(logits.numpy(), targets.numpy(), margin), rtol=1e-12
    )


def test_all_known_batch_is_cross_entropy() -> None:
    logits, targets = mixed_batch()
    targets = targets.clamp_min(0)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            EntropicOpenSetLoss(6, reduction=reduction)(logits, targets),
            F.cross_entropy(logits, targets, reduction=reduction),
        )


def test_mel_with_zero_margin_is_eos() -> None:
    logits, targets = mixed_batch()
    logits.requires_grad_(True)
    eos = EntropicOpenSetLoss(6)(logits, targets)
    mel = MaximalEntropyLoss(6, margin=0.0)(logits, targets)
    torch.testing.assert_close(mel, eos)
    (grad_eos,) = torch.autograd.grad(eos, logits)
    (grad_mel,) = torch.autograd.grad(mel, logits)
    torch.testing.assert_close(grad_mel, grad_eos)


def test_margin_only_touches_known_samples() -> None:
    logits, targets = mixed_batch()
    negative = targets < 0
    eos = EntropicOpenSetLoss(6, reduction="none")(logits, targets)
    mel = MaximalEntropyLoss(6, margin=0.5, reduction="none")(logits, targets)
    torch.testing.assert_close(mel[negative], eos[negative])
    assert bool((mel[~negative] > eos[~negative]).all())  # lowering z_y raises -log p_y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weight_matches_cross_entropy_semantics(reduction: str) -> None:
    logits, targets = mixed_batch()
    targets = targets.clamp_min(0)
    weight = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], dtype=torch.float64)
    ours = EntropicOpenSetLoss(6, reduction=reduction, weight=weight)(logits, targets)
    reference = torch.nn.CrossEntropyLoss(weight=weight, reduction=reduction)(logits, targets)
    torch.testing.assert_close(ours, reference)


def test_negative_and_sample_weights_give_a_weighted_mean() -> None:
    logits, targets = mixed_batch()
    weight = torch.arange(1, 7, dtype=torch.float64)
    sample_weight = torch.linspace(0.1, 2.0, len(targets), dtype=torch.float64)
    loss = EntropicOpenSetLoss(6, weight=weight, negative_weight=0.25)
    per_sample = numpy_entropic(logits.numpy(), targets.numpy())
    labels = targets.numpy()
    w = np.where(labels >= 0, weight.numpy()[np.maximum(labels, 0)], 0.25) * sample_weight.numpy()
    expected = (w * per_sample).sum() / w.sum()
    assert loss(logits, targets, sample_weight=sample_weight).item() == pytest.approx(expected)
    # sample_weight alone: negatives count negative_weight, knowns 1.
    plain = EntropicOpenSetLoss(6, negative_weight=0.0)
    known = labels >= 0
    expected_known_mean = per_sample[known].mean()
    ones = torch.ones(len(targets), dtype=torch.float64)
    assert plain(logits, targets, sample_weight=ones).item() == pytest.approx(expected_known_mean)


def test_all_weights_zero_gives_zero_not_nan() -> None:
    logits, targets = mixed_batch()
    loss = EntropicOpenSetLoss(6)(logits, targets, sample_weight=torch.zeros(len(targets)))
    assert loss.item() == 0.0


@pytest.mark.parametrize("margin", [0.0, 0.35])
def test_gradcheck_float64(margin: float) -> None:
    logits, targets = mixed_batch(n=12, c=5)
    logits.requires_grad_(True)
    weight = torch.rand(5, dtype=torch.float64) + 0.1
    sample_weight = torch.rand(12, dtype=torch.float64)
    for loss in (
        MaximalEntropyLoss(5, margin=margin),
        MaximalEntropyLoss(5, margin=margin, reduction="none", weight=weight),
        MaximalEntropyLoss(5, margin=margin, reduction="sum", negative_weight=0.3),
    ):
        assert torch.autograd.gradcheck(lambda z, f=loss: f(z, targets, sample_weight), (logits,))


def test_extreme_logits_stay_finite() -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 0.0, -1e4]])
    logits.requires_grad_(True)
    targets = torch.tensor([1, -1, 0])
    for loss in (EntropicOpenSetLoss(3), MaximalEntropyLoss(3, margin=5.0)):
        value = loss(logits, targets)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and bool(torch.isfinite(grad).all())
    # -log p_1 for row 0 is 2e4 exactly.
    first = EntropicOpenSetLoss(3, reduction="none")(logits.detach(), targets)[0]
    assert first.item() == pytest.approx(2e4)


def test_bfloat16_close_to_float32() -> None:
    logits, targets = mixed_batch(dtype=torch.float32)
    for loss in (EntropicOpenSetLoss(6), MaximalEntropyLoss(6)):
        half = logits.to(torch.bfloat16).requires_grad_(True)
        value = loss(half, targets)
        value.backward()
        assert value.dtype == torch.bfloat16 and half.grad.dtype == torch.bfloat16
        reference = loss(half.detach().float(), targets)  # same rounded inputs, in float32
        assert value.float().item() == pytest.approx(reference.item(), rel=1e-2)
        assert bool(torch.isfinite(half.grad.float()).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    logits, targets = mixed_batch(dtype=torch.float32)
    for loss in (EntropicOpenSetLoss(6), MaximalEntropyLoss(6)):
        cpu = loss(logits, targets)
        gpu = loss.cuda()(logits.cuda(), targets.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu)


def test_same_values_as_openloss() -> None:
    import openloss  # the dev extra installs it: a missing reference fails, never skips

    logits, targets = mixed_batch(dtype=torch.float32)
    for reduction in ("mean", "sum", "none"):
        pairs = [
            (EntropicOpenSetLoss(6, reduction), openloss.EntropicOpenSetLoss(6, reduction)),
            (MaximalEntropyLoss(6, reduction=reduction), openloss.MaximalEntropyLoss(6)),
        ]
        pairs[1][1].reduction = reduction
        for ours, theirs in pairs:
            torch.testing.assert_close(ours(logits, targets), theirs(logits, targets))

"""ArcFaceLoss and CosFaceLoss: values, gradients (also at cos = ±1), negatives, inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from training.losses import ArcFaceLoss, CosFaceLoss, EntropicOpenSetLoss


def numpy_margin_loss(embeddings, weight, targets, kind: str, margin: float, scale: float):
    """Independent reference with acos and explicit angles (float64)."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cosine = np.clip(e @ w.T, -1, 1)
    losses = []
    for row, label in zip(cosine, targets, strict=True):
        logits = scale * row.copy()
        if label >= 0:
            c = row[label]
            if kind == "cosface":
                target = c - margin
            elif math.acos(c) + margin <= math.pi:
                target = math.cos(math.acos(c) + margin)
            else:
                target = c - margin * math.sin(margin)
            logits[label] = scale * target
        log_p = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        losses.append(-log_p[label] if label >= 0 else -log_p.mean())
    return np.array(losses)


def random_case(n: int = 24, c: int = 7, d: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, d, generator=generator, dtype=torch.float64)
    targets = torch.randint(-1, c, (n,), generator=generator)
    return embeddings, targets


@pytest.mark.parametrize(
    ("cls", "kind", "margin"),
    [(ArcFaceLoss, "arcface", 0.5), (ArcFaceLoss, "arcface", 1.4), (CosFaceLoss, "cosface", 0.35)],
)
def test_matches_independent_formula(cls, kind: str, margin: float) -> None:
    embeddings, targets = random_case()
    head = cls(7, 5, margin=margin, scale=8.0, reduction="none").double()
    expected = numpy_margin_loss(
        embeddings.numpy(), head.weight.detach().numpy(), targets.numpy(), kind, margin, 8.0
    )
    np.testing.assert_allclose(head(embeddings, targets).detach().numpy(), expected, rtol=1e-10)


def test_arcface_fallback_region_is_covered() -> None:
    # With m = 1.4, θ_y + m > π for θ_y > 1.74 rad: embeddings opposite to their class.
    head = ArcFaceLoss(3, 3, margin=1.4, scale=1.0, reduction="none").double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, dtype=torch.float64))
    embeddings = torch.tensor([[-1.0, 0.1, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0])
    cosine = -1 / math.sqrt(1.01)
    fallback_target = cosine - 1.4 * math.sin(1.4)
    others = [0.1 / math.sqrt(1.01), 0.0]
    expected0 = -fallback_target + math.log(math.exp(fallback_target) + sum(map(math.exp, others)))
    expected1 = -math.cos(1.4) + math.log(math.exp(math.cos(1.4)) + 2.0)
    torch.testing.assert_close(
        head(embeddings, targets), torch.tensor([expected0, expected1], dtype=torch.float64)
    )


@pytest.mark.parametrize("cls", [ArcFaceLoss, CosFaceLoss])
def test_gradcheck_float64_with_negatives(cls) -> None:
    embeddings, targets = random_case(n=10, c=4, d=3, seed=3)
    embeddings.requires_grad_()
    for margin in (0.0, 0.3, 1.2):
        head = cls(4, 3, margin=margin, scale=4.0).double()
        weight = head.weight.detach().clone().requires_grad_()
        if margin == 1.2:  # the ArcFace fallback region θ + m > π is part of the check
            known = targets >= 0
            cosine = head.logits(embeddings.detach())[known, targets[known]] / 4.0
            assert bool((cosine < math.cos(math.pi - margin)).any())
            assert bool((cosine > math.cos(math.pi - margin)).any())
        assert torch.autograd.gradcheck(
            lambda e, w, h=head: functional_call(h, {"weight": w}, (e, targets)),
            (embeddings, weight),
            fast_mode=True,  # random projections of the Jacobian: same check, fewer calls
        )


def test_gradient_finite_at_cos_plus_and_minus_one() -> None:
    for dtype in (torch.float32, torch.float64):
        head = ArcFaceLoss(3, 3, margin=0.5).to(dtype)
        with torch.no_grad():
            head.weight.copy_(torch.eye(3, dtype=dtype))
        # cos = 1 (aligned), cos = -1 (opposite: fallback region), and an ordinary one.
        embeddings = torch.tensor([[2.0, 0, 0], [-3.0, 0, 0], [1.0, 1.0, 0]], dtype=dtype)
        embeddings.requires_grad_()
        loss = head(embeddings, torch.tensor([0, 0, 2]))
        loss.backward()
        assert torch.isfinite(loss)
        assert bool(torch.isfinite(embeddings.grad).all())
        assert bool(torch.isfinite(head.weight.grad).all())


def test_arcface_derivative_near_cos_one_is_exact() -> None:
    # Just inside cos = 1 the true derivative dφ/dc = sin(θ+m)/sin θ is large but exact.
    head = ArcFaceLoss(2, 2, margin=0.5, scale=1.0, reduction="sum").double()
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, dtype=torch.float64))
    theta = 1e-4
    embeddings = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    embeddings.requires_grad_()
    assert torch.autograd.gradcheck(lambda e: head(e, torch.tensor([0])), (embeddings,))


def test_zero_margin_heads_agree_and_equal_eos_on_scaled_cosines() -> None:
    embeddings, targets = random_case()
    arc = ArcFaceLoss(7, 5, margin=0.0, scale=10.0).double()
    cos = CosFaceLoss(7, 5, margin=0.0, scale=10.0).double()
    with torch.no_grad():
        cos.weight.copy_(arc.weight)
    torch.testing.assert_close(arc(embeddings, targets), cos(embeddings, targets))
    eos = EntropicOpenSetLoss(7)(arc.logits(embeddings), targets)
    torch.testing.assert_close(arc(embeddings, targets), eos)


def test_negatives_get_uniform_target_without_margin() -> None:
    embeddings, targets = random_case()
    negatives = targets < 0
    assert bool(negatives.any())
    for head in (ArcFaceLoss(7, 5, reduction="none"), CosFaceLoss(7, 5, reduction="none")):
        head = head.double()
        logits = head.logits(embeddings)
        uniform = torch.logsumexp(logits, dim=1) - logits.mean(dim=1)
        torch.testing.assert_close(head(embeddings, targets)[negatives], uniform[negatives])


def test_logits_are_scaled_cosines_and_margin_raises_loss() -> None:
    embeddings, targets = random_case()
    head = CosFaceLoss(7, 5, margin=0.35, scale=64.0).double()
    unit_e = embeddings / embeddings.norm(dim=1, keepdim=True)
    unit_w = head.weight / head.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head.logits(embeddings), 64.0 * unit_e @ unit_w.T)
    known = targets.clamp_min(0)
    with_margin = head(embeddings, known)
    head.margin = 0.0
    assert with_margin > head(embeddings, known)


def test_bfloat16_forward_close_to_float32() -> None:
    embeddings, targets = random_case()
    head = ArcFaceLoss(7, 5)
    half = embeddings.to(torch.bfloat16).requires_grad_()
    value = head(half, targets)
    value.backward()
    assert value.dtype == torch.bfloat16 and half.grad.dtype == torch.bfloat16
    reference = head(half.detach().float(), targets)
    assert value.float().item() == pytest.approx(reference.item(), rel=1e-2)


def test_parameters_learn() -> None:
    head = ArcFaceLoss(4, 3)
    assert [name for name, _ in head.named_parameters()] == ["weight"]
    assert head.weight.shape == (4, 3)
    embeddings, targets = random_case(n=8, c=4, d=3)
    head(embeddings.float(), targets).backward()
    assert head.weight.grad is not None and bool(head.weight.grad.abs().sum() > 0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="ArcFace margin must be in"):
        ArcFaceLoss(3, 4, margin=2.0)
    with pytest.raises(ValueError, match="CosFace margin must be in"):
        CosFaceLoss(3, 4, margin=-0.1)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        CosFaceLoss(3, 4, scale=0.0)
    with pytest.raises(ValueError, match="embedding_dim must be a positive int"):
        ArcFaceLoss(3, 0)
    head = ArcFaceLoss(3, 4)
    with pytest.raises(ValueError, match="embeddings has 5 columns but the loss was built for 4"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="embeddings has 5 columns"):
        head.logits(torch.randn(2, 5))


def test_same_values_as_pytorch_metric_learning() -> None:
    import pytorch_metric_learning.losses as pml  # in the dev extra: never skipped

    embeddings, targets = random_case()
    targets = targets.clamp_min(0)
    pairs = [
        (ArcFaceLoss(7, 5), pml.ArcFaceLoss(7, 5, margin=math.degrees(0.5), scale=64)),
        (CosFaceLoss(7, 5), pml.CosFaceLoss(7, 5, margin=0.35, scale=64)),
    ]
    for ours, theirs in pairs:
        ours, theirs = ours.double(), theirs.double()
        with torch.no_grad():
            theirs.W.copy_(ours.weight.T)
        torch.testing.assert_close(ours(embeddings, targets), theirs(embeddings, targets))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    embeddings, targets = random_case()
    head = ArcFaceLoss(7, 5).double()
    cpu = head(embeddings, targets)
    torch.testing.assert_close(head.cuda()(embeddings.cuda(), targets.cuda()).cpu(), cpu)

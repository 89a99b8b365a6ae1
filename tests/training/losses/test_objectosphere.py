"""ObjectoSphereLoss and EntropicObjectoSphereLoss."""

from __future__ import annotations

import pytest
import torch

from training.losses import EntropicObjectoSphereLoss, EntropicOpenSetLoss, ObjectoSphereLoss


def test_hand_worked_values() -> None:
    # ||(3, 4)|| = 5: known with ξ=10 -> (10-5)² = 25; negative -> 25; known past the ring -> 0.
    features = torch.tensor([[3.0, 4.0], [3.0, 4.0], [6.0, 8.0], [0.0, 0.0]])
    targets = torch.tensor([0, -1, 2, 1])
    per_sample = ObjectoSphereLoss(10.0, reduction="none")(features, targets)
    torch.testing.assert_close(per_sample, torch.tensor([25.0, 25.0, 0.0, 100.0]))
    assert ObjectoSphereLoss(10.0)(features, targets).item() == pytest.approx(150 / 4)
    assert ObjectoSphereLoss(10.0, reduction="sum")(features, targets).item() == 150
    weighted = ObjectoSphereLoss(10.0)(features, targets, torch.tensor([1.0, 3.0, 1.0, 0.0]))
    assert weighted.item() == pytest.approx((25 + 75) / 5)


def test_gradient_finite_at_the_origin() -> None:
    features = torch.zeros(2, 3, requires_grad=True)
    loss = ObjectoSphereLoss(10.0)(features, torch.tensor([0, -1]))
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == pytest.approx(50.0)  # (100 + 0) / 2
    # Negative: d||f||²/df = 2f = 0 exactly; known: the kink of ||f|| at 0 is taken as 0.
    torch.testing.assert_close(grad, torch.zeros(2, 3))


def test_gradient_matches_the_formula() -> None:
    # d/df (ξ - ||f||)² = -2(ξ - ||f||) f/||f||; d/df ||f||² = 2f.
    features = torch.tensor([[3.0, 4.0], [1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    loss = ObjectoSphereLoss(10.0, reduction="sum")(features, torch.tensor([0, -1]))
    (grad,) = torch.autograd.grad(loss, features)
    expected = torch.tensor([[-2 * 5 * 3 / 5, -2 * 5 * 4 / 5], [2.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected)


def test_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(10, 4, generator=generator, dtype=torch.float64).requires_grad_()
    logits = torch.randn(10, 3, generator=generator, dtype=torch.float64).requires_grad_()
    targets = torch.tensor([0, 1, 2, -1, -1, 0, 1, 2, -3, 0])
    sphere = ObjectoSphereLoss(2.0)
    assert torch.autograd.gradcheck(lambda f: sphere(f, targets), (features,))
    both = EntropicObjectoSphereLoss(3, min_magnitude=2.0, lambda_=0.5)
    assert torch.autograd.gradcheck(lambda z, f: both(z, f, targets), (logits, features))


def test_combined_is_eos_plus_lambda_objectosphere() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 4, generator=generator)
    features = torch.randn(12, 8, generator=generator) * 3
    targets = torch.randint(-1, 4, (12,), generator=generator)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0])
    for reduction in ("mean", "sum", "none"):
        combined = EntropicObjectoSphereLoss(4, 5.0, 0.1, reduction=reduction)
        expected = EntropicOpenSetLoss(4, reduction=reduction)(
            logits, targets
        ) + 0.1 * ObjectoSphereLoss(5.0, reduction=reduction)(features, targets)
        torch.testing.assert_close(combined(logits, features, targets), expected)
    # With class weights, both terms of a sample carry its weight.
    per_sample = EntropicObjectoSphereLoss(4, 5.0, 0.1, reduction="none")(logits, features, targets)
    w = torch.where(targets >= 0, weight[targets.clamp_min(0)], 1.0)
    weighted = EntropicObjectoSphereLoss(4, 5.0, 0.1, weight=weight)(logits, features, targets)
    torch.testing.assert_close(weighted, (w * per_sample).sum() / w.sum())


def test_bfloat16_close_to_float32() -> None:
    features = (torch.randn(16, 8) * 4).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(-1, 3, (16,))
    value = ObjectoSphereLoss()(features, targets)
    value.backward()
    assert value.dtype == torch.bfloat16 and features.grad.dtype == torch.bfloat16
    reference = ObjectoSphereLoss()(features.detach().float(), targets)
    assert value.float().item() == pytest.approx(reference.item(), rel=1e-2)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="min_magnitude must be finite and >= 0"):
        ObjectoSphereLoss(-1.0)
    with pytest.raises(ValueError, match="lambda_ must be finite"):
        EntropicObjectoSphereLoss(3, lambda_=float("inf"))
    with pytest.raises(ValueError, match=r"features must have shape \[N, C\]"):
        ObjectoSphereLoss()(torch.ones(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        ObjectoSphereLoss()(torch.ones(3, 2), torch.ones(3))
    with pytest.raises(ValueError, match="must match the logits"):
        EntropicObjectoSphereLoss(3)(torch.ones(4, 3), torch.ones(3, 2), torch.tensor([0] * 4))
    with pytest.raises(ValueError, match="out of range"):
        EntropicObjectoSphereLoss(3)(torch.ones(2, 3), torch.ones(2, 2), torch.tensor([0, 3]))


def test_same_values_as_openloss() -> None:
    import openloss  # the dev extra installs it: a missing reference fails, never skips

    features = torch.randn(20, 6) * 5
    targets = torch.randint(-1, 4, (20,))
    for reduction in ("mean", "sum", "none"):
        ours = ObjectoSphereLoss(10.0, reduction)(features, targets)
        theirs = openloss.ObjectoSphereLoss(10.0, reduction)(features, targets)
        torch.testing.assert_close(ours, theirs)
    # Documented difference: openloss's weighted "mean" divides by N, ours by Σ w.
    weights = torch.rand(20) + 0.5
    ours = ObjectoSphereLoss(10.0)(features, targets, weights)
    theirs = openloss.ObjectoSphereLoss(10.0)(features, targets, sample_weights=weights)
    torch.testing.assert_close(theirs, ours * weights.sum() / 20, rtol=1e-5, atol=1e-5)

"""CACLoss: distances, hand-worked loss, prediction, open-set score, anchor update."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import CACLoss


def test_distances_to_default_anchors() -> None:
    loss = CACLoss(2, alpha=3.0)
    logits = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    expected = torch.tensor([[0.0, math.sqrt(18)], [5.0, 1.0], [3.0, 3.0]])
    torch.testing.assert_close(loss.distances(logits), expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(loss.predict(logits), torch.tensor([0, 1, 0]))


def test_hand_worked_loss() -> None:
    # logits (0, 4), α=3: d = (5, 1). Class 0: log(1 + e^(5-1)) + λ·5; class 1: log(1 + e^-4) + λ.
    loss = CACLoss(2, alpha=3.0, lambda_=0.1, reduction="none")
    logits = torch.tensor([[0.0, 4.0], [0.0, 4.0]])
    expected = torch.tensor([math.log1p(math.exp(4)) + 0.5, math.log1p(math.exp(-4)) + 0.1])
    torch.testing.assert_close(loss(logits, torch.tensor([0, 1])), expected)


def test_loss_matches_explicit_tuplet_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=generator, dtype=torch.float64) * 4
    targets = torch.randint(0, 5, (20,), generator=generator)
    loss = CACLoss(5, reduction="none").double()
    anchors = 10.0 * torch.eye(5, dtype=torch.float64)
    d = torch.cdist(logits, anchors)
    d_y = d.gather(1, targets[:, None])
    others = torch.ones_like(d, dtype=torch.bool).scatter_(1, targets[:, None], False)
    tuplet = torch.log1p(torch.where(others, torch.exp(d_y - d), 0.0).sum(1))
    torch.testing.assert_close(loss(logits, targets), tuplet + 0.1 * d_y.squeeze(1))


def test_open_set_score() -> None:
    loss = CACLoss(2, alpha=3.0)
    logits = torch.tensor([[0.0, 4.0]])  # d = (5, 1)
    softmin = torch.softmax(-torch.tensor([5.0, 1.0]), dim=0)
    expected = min(5 * (1 - softmin[0].item()), 1 * (1 - softmin[1].item()))
    assert loss.open_set_score(logits).item() == pytest.approx(expected, rel=1e-5)
    # Far from every anchor scores higher (more unknown) than on an anchor.
    far, near = loss.open_set_score(torch.tensor([[-20.0, -20.0], [3.0, 0.0]]))
    assert far > near


def test_set_anchors_from_class_means_uses_correct_samples_only() -> None:
    loss = CACLoss(3, alpha=10.0)
    logits = torch.tensor([[9.0, 1.0, 0.0], [11.0, -1.0, 0.0], [0.0, 8.0, 0.0], [10.0, 0.0, 0.0]])
    targets = torch.tensor([0, 0, 1, 1])  # the last one is misclassified (nearest anchor 0)
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        counts = loss.set_anchors_from_class_means(logits, targets)
    torch.testing.assert_close(counts, torch.tensor([2, 1, 0]))
    torch.testing.assert_close(loss.anchors[0], torch.tensor([10.0, 0.0, 0.0]))
    torch.testing.assert_close(loss.anchors[1], torch.tensor([0.0, 8.0, 0.0]))
    torch.testing.assert_close(loss.anchors[2], torch.tensor([0.0, 0.0, 10.0]))  # unchanged
    assert "anchors" in loss.state_dict()
    loss.reset_anchors()
    torch.testing.assert_close(loss.anchors, 10.0 * torch.eye(3))


def test_gradcheck_float64_and_finite_on_an_anchor() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 4, generator=generator, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 4, (8,), generator=generator)
    loss = CACLoss(4, alpha=2.0).double()
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    on_anchor = torch.tensor([[2.0, 0.0, 0.0, 0.0]], requires_grad=True)
    value = CACLoss(4, alpha=2.0)(on_anchor, torch.tensor([0]))
    value.backward()
    assert bool(torch.isfinite(on_anchor.grad).all())


def test_bfloat16_close_to_float32() -> None:
    logits = (torch.randn(16, 5) * 5).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 5, (16,))
    value = CACLoss(5)(logits, targets)
    value.backward()
    assert value.dtype == torch.bfloat16 and logits.grad.dtype == torch.bfloat16
    reference = CACLoss(5)(logits.detach().float(), targets)
    assert value.float().item() == pytest.approx(reference.item(), rel=1e-2)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        CACLoss(3, alpha=0.0)
    with pytest.raises(ValueError, match="lambda_ must be finite and >= 0"):
        CACLoss(3, lambda_=-1.0)
    loss = CACLoss(3)
    with pytest.raises(ValueError, match="no negative samples"):
        loss(torch.randn(2, 3), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="2 columns but the loss was built for 3"):
        loss.open_set_score(torch.randn(2, 2))
    with pytest.raises(ValueError, match="out of range"):
        loss.set_anchors_from_class_means(torch.randn(2, 3), torch.tensor([0, 5]))


def test_general_anchors_path_matches_cdist() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=generator, dtype=torch.float64) * 5
    loss = CACLoss(3).double()
    anchors = torch.randn(3, 3, generator=generator, dtype=torch.float64) * 4
    loss.anchors.copy_(anchors)
    torch.testing.assert_close(loss.distances(logits), torch.cdist(logits, anchors))
    loss.reset_anchors()
    torch.testing.assert_close(
        loss.distances(logits), torch.cdist(logits, 10.0 * torch.eye(3, dtype=torch.float64))
    )

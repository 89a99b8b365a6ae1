"""SimLoss and its similarity builders."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import SimLoss, ordinal_similarity, similarity_from_matrix


def test_identity_is_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 5, (20,), generator=generator)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            SimLoss(torch.eye(5), reduction=reduction, weight=weight)(logits, targets),
            F.cross_entropy(logits, targets, weight=weight, reduction=reduction),
        )


def test_hand_worked_value() -> None:
    # Uniform logits over 3 classes: p = 1/3 each; W row (1, 0.5, 0): -log(1.5/3) = log 2.
    similarity = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]])
    value = SimLoss(similarity, reduction="none")(torch.zeros(2, 3), torch.tensor([0, 1]))
    torch.testing.assert_close(value, torch.tensor([math.log(2), -math.log(2 / 3)]))


def test_matches_probability_space_formula_and_gradcheck() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=generator, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, 4, (12,), generator=generator)
    similarity = ordinal_similarity(4, 0.5).double()
    similarity[0, 3] = similarity[3, 0] = 0.0  # a zero entry: log 0 = -inf must be safe
    loss = SimLoss(similarity, reduction="none")
    expected = -torch.log((similarity[targets] * torch.softmax(logits, 1)).sum(1))
    torch.testing.assert_close(loss(logits, targets), expected)
    assert torch.autograd.gradcheck(lambda z: loss(z, targets).sum(), (logits,))


def test_extreme_logits_stay_finite() -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = SimLoss(ordinal_similarity(3, 0.0))(logits, torch.tensor([1]))
    loss.backward()
    assert loss.item() == pytest.approx(2e4) and bool(torch.isfinite(logits.grad).all())


def test_ordinal_similarity() -> None:
    expected = torch.tensor([[1.0, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 1.0]])
    torch.testing.assert_close(ordinal_similarity(3, 0.5), expected)
    torch.testing.assert_close(ordinal_similarity(3, 0.0), torch.eye(3))


def test_similarity_from_matrix() -> None:
    similarity = torch.tensor([[0.9, 0.8, 0.2], [0.8, 1.0, 0.6], [0.2, 0.6, 1.0]])
    expected = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.2], [0.0, 0.2, 1.0]])
    torch.testing.assert_close(similarity_from_matrix(similarity, 0.5), expected)


def test_bfloat16_close_to_float32() -> None:
    logits = torch.randn(16, 5).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 5, (16,))
    loss = SimLoss(ordinal_similarity(5, 0.3))
    value = loss(logits, targets)
    value.backward()
    assert value.dtype == torch.bfloat16 and logits.grad.dtype == torch.bfloat16
    assert value.float().item() == pytest.approx(
        loss(logits.detach().float(), targets).item(), rel=1e-2
    )


@pytest.mark.parametrize(
    ("similarity", "message"),
    [
        (torch.ones(2, 3), r"square \[C, C\]"),
        (torch.tensor([[1.0, 1.5], [0.0, 1.0]]), r"entries must be in \[0, 1\]"),
        (torch.tensor([[1.0, -0.5], [0.0, 1.0]]), r"entries must be in \[0, 1\]"),
        (torch.tensor([[0.9, 0.0], [0.0, 1.0]]), "unit diagonal"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "finite"),
    ],
)
def test_bad_similarity(similarity, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimLoss(similarity)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2 columns but the loss was built for 3"):
        SimLoss(torch.eye(3))(torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="no negative samples"):
        SimLoss(torch.eye(3))(torch.zeros(1, 3), torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        ordinal_similarity(3, 1.0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        ordinal_similarity(0, 0.5)
    with pytest.raises(ValueError, match=r"lower_bound must be in \[0, 1\)"):
        similarity_from_matrix(torch.eye(2), 1.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        similarity_from_matrix(torch.eye(2) * 2, 0.5)

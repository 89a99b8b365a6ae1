"""Shared conventions: every bad input is a ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from training.losses import EntropicOpenSetLoss, MaximalEntropyLoss

LOGITS = torch.randn(4, 3)
TARGETS = torch.tensor([0, 2, -1, 1])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EntropicOpenSetLoss(3, reduction="avg"), "reduction must be one of"),
        (lambda: EntropicOpenSetLoss(0), "num_classes must be a positive int"),
        (lambda: EntropicOpenSetLoss(2.5), "num_classes must be a positive int"),
        (lambda: EntropicOpenSetLoss(3, weight=torch.ones(4)), r"weight must be .* shape \[3\]"),
        (lambda: EntropicOpenSetLoss(3, weight=torch.tensor([1.0, -1, 1])), "non-negative"),
        (lambda: EntropicOpenSetLoss(3, negative_weight=-1.0), "negative_weight"),
        (lambda: MaximalEntropyLoss(3, margin=float("nan")), "margin must be a finite"),
    ],
)
def test_bad_construction(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("logits", "targets", "message"),
    [
        (LOGITS[0], TARGETS, r"logits must have shape \[N, C\]"),
        (LOGITS[:, :2], TARGETS, "2 columns but the loss was built for 3"),
        (LOGITS[:0], TARGETS[:0], "empty batch"),
        (LOGITS.long(), TARGETS, "floating-point"),
        (LOGITS, TARGETS.float(), "integer tensor"),
        (LOGITS, TARGETS > 0, "integer tensor"),
        (LOGITS, TARGETS[:, None], r"targets must have shape \[N\]"),
        (LOGITS, TARGETS[:3], "3 entries but the inputs have N=4"),
        (LOGITS, torch.tensor([0, 3, 1, 1]), r"target 3 is out of range .* \[0, 3\)"),
        (LOGITS, [0, 1, 2, 0], "must be a torch.Tensor"),
    ],
)
def test_bad_inputs(logits, targets, message: str) -> None:
    for loss in (EntropicOpenSetLoss(3), MaximalEntropyLoss(3)):
        with pytest.raises(ValueError, match=message):
            loss(logits, targets)


@pytest.mark.parametrize(
    ("sample_weight", "message"),
    [
        (torch.ones(3), r"sample_weight must have shape \[4\]"),
        (torch.tensor([1.0, -1.0, 1.0, 1.0]), "finite and non-negative"),
        (torch.tensor([1.0, float("inf"), 1.0, 1.0]), "finite and non-negative"),
        (torch.ones(4, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_sample_weight(sample_weight, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EntropicOpenSetLoss(3)(LOGITS, TARGETS, sample_weight=sample_weight)


def test_reduction_changed_after_construction_is_checked() -> None:
    loss = EntropicOpenSetLoss(3)
    loss.reduction = "max"
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(LOGITS, TARGETS)


def test_device_mismatch_is_named() -> None:
    # The meta device stands in for a second device: the check runs before any arithmetic.
    with pytest.raises(ValueError, match="targets are on meta but the inputs are on cpu"):
        EntropicOpenSetLoss(3)(LOGITS, TARGETS.to("meta"))
    with pytest.raises(ValueError, match="sample_weight is on meta"):
        EntropicOpenSetLoss(3)(LOGITS, TARGETS, sample_weight=torch.ones(4, device="meta"))

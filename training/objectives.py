"""Training objectives: one adapter per loss name, on top of :mod:`training.losses`.

An :class:`Objective` knows how many logits the network must produce, whether it trains on
negative samples, how to compute the loss from ``(embedding, logits, targets)`` and how to
predict a known class for the training accuracy. Losses with parameters (ArcFace/CosFace
heads) are sub-modules, so the optimiser, DDP and checkpoints see them.

Targets: a known class index, or -1 for a negative sample. Losses that do not use negatives
(softmax, arcface, cosface, cac, simloss) never receive any: the trainer drops them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Objective(nn.Module):
    name: str = ""
    uses_negatives: bool = False

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim

    @property
    def num_logits(self) -> int:
        """Width of the network's linear head (0: no head, margin losses bring their own)."""
        return self.num_classes

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def class_scores(self, embedding: Tensor, logits: Tensor) -> Tensor:
        """[N, num_classes] scores whose arg-max is the predicted known class."""
        return logits[:, : self.num_classes]

    def predict(self, embedding: Tensor, logits: Tensor) -> Tensor:
        return self.class_scores(embedding, logits).argmax(dim=1)


class Softmax(Objective):
    name = "softmax"

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets)


class Garbage(Objective):
    """Negatives form one extra ("garbage") class C."""

    name = "garbage"
    uses_negatives = True

    @property
    def num_logits(self) -> int:
        return self.num_classes + 1

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        targets = torch.where(targets < 0, torch.full_like(targets, self.num_classes), targets)
        return F.cross_entropy(logits.float(), targets)


class _LogitLoss(Objective):
    """A loss of ``(logits, targets)`` from training.losses."""

    def __init__(self, loss: nn.Module, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.loss = loss

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return self.loss(logits, targets)


class EntropicOpenSet(_LogitLoss):
    name = "eos"
    uses_negatives = True


class MaximalEntropy(_LogitLoss):
    name = "mel"
    uses_negatives = True


class ObjectoSphere(Objective):
    name = "objectosphere"
    uses_negatives = True

    def __init__(self, loss: nn.Module, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.loss = loss

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return self.loss(logits, embedding, targets)


class MarginHead(Objective):
    """ArcFace / CosFace: the loss owns a cosine head on the embedding."""

    def __init__(self, name: str, loss: nn.Module, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.name = name
        self.loss = loss

    @property
    def num_logits(self) -> int:
        return 0

    def forward(self, embedding: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return self.loss(embedding, targets)

    def class_scores(self, embedding: Tensor, logits: Tensor) -> Tensor:
        return self.loss.logits(embedding)


class ClassAnchorClustering(_LogitLoss):
    name = "cac"

    def class_scores(self, embedding: Tensor, logits: Tensor) -> Tensor:
        return -self.loss.distances(logits)


class Similarity(_LogitLoss):
    name = "simloss"


def margin_scale(scale: Any, num_classes: int) -> float:
    """The scale s of a margin head: a number, or ``"auto"`` for AdaCos' fixed scale.

    ``"auto"`` (the training default) is ``sqrt(2)·ln(C - 1)``: the face-recognition s = 64
    saturates the softmax of a few classes and left ArcFace stuck on 6 digit classes (see
    docs/training.md); ``loss_params: {scale: 64}`` keeps the papers' setting.
    """
    from training.losses import adacos_fixed_scale

    if scale == "auto":
        return adacos_fixed_scale(num_classes)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"loss_params.scale must be a positive number or 'auto'; got {scale!r}")
    return float(scale)


def build_objective(
    name: str, num_classes: int, embedding_dim: int, params: dict[str, Any] | None = None
) -> Objective:
    """The objective for a loss name; ``params`` go to the loss's constructor."""
    params = dict(params or {})
    if name == "softmax":
        return Softmax(num_classes, embedding_dim)
    if name == "garbage":
        return Garbage(num_classes, embedding_dim)
    from training import losses

    try:
        if name == "eos":
            return EntropicOpenSet(
                losses.EntropicOpenSetLoss(num_classes, **params), num_classes, embedding_dim
            )
        if name == "mel":
            return MaximalEntropy(
                losses.MaximalEntropyLoss(num_classes, **params), num_classes, embedding_dim
            )
        if name == "objectosphere":
            return ObjectoSphere(
                losses.EntropicObjectoSphereLoss(num_classes, **params),
                num_classes,
                embedding_dim,
            )
        if name in ("arcface", "cosface"):
            params["scale"] = margin_scale(params.get("scale", "auto"), num_classes)
            head = losses.ArcFaceLoss if name == "arcface" else losses.CosFaceLoss
            loss = head(num_classes, embedding_dim, **params)
            return MarginHead(name, loss, num_classes, embedding_dim)
        if name == "cac":
            return ClassAnchorClustering(
                losses.CACLoss(num_classes, **params), num_classes, embedding_dim
            )
        if name == "simloss":
            ratio = params.pop("ratio", 0.5)
            similarity = losses.ordinal_similarity(num_classes, ratio)
            return Similarity(losses.SimLoss(similarity, **params), num_classes, embedding_dim)
    except TypeError as error:
        raise ValueError(f"loss {name!r}: bad loss_params {params}: {error}") from None
    raise ValueError(
        f"unknown loss {name!r}; choose one of softmax, garbage, eos, mel, objectosphere, "
        "arcface, cosface, cac, simloss"
    )

"""Embedding networks. Each returns ``(embedding [N, D], logits [N, C])``.

- :class:`LeNetPP`: the LeNet++ of Wen et al. (2016), as used for open-set MNIST by Dhamija
  et al. (2018): three stages of two 5x5 convolutions with batch norm and PReLU, 2x2 max
  pooling, then a linear layer to a D-dimensional embedding (D=32 here rather than the
  papers' 2, which they chose for plotting).
- :class:`SmallResNet`: four stages of one basic residual block each (widths w, 2w, 4w, 8w),
  global average pooling and a linear embedding, for larger RGB inputs.

The embedding is what the bundle exports and the gallery compares (cosine). ``logits`` come
from a linear head on the embedding; margin losses (ArcFace/CosFace) bring their own cosine
head and ignore them. ``num_logits=0`` builds no head (``logits`` is then the embedding).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    ]


class EmbeddingNetwork(nn.Module):
    """Base: ``features`` (to a flat vector) -> ``embed`` (to D) -> optional linear head."""

    embedding_dim: int

    def __init__(self, embedding_dim: int, num_logits: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_logits = num_logits
        self.head = nn.Linear(embedding_dim, num_logits) if num_logits > 0 else None

    def embedding(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.embedding(x)
        logits = self.head(embedding) if self.head is not None else embedding
        return embedding, logits


class LeNetPP(EmbeddingNetwork):
    def __init__(
        self,
        in_channels: int = 1,
        input_size: int = 28,
        embedding_dim: int = 32,
        num_logits: int = 10,
        width: int = 32,
    ) -> None:
        super().__init__(embedding_dim, num_logits)
        layers: list[nn.Module] = []
        channels = in_channels
        size = input_size
        for stage in range(3):
            out = width * 2**stage
            layers += _conv_bn(channels, out, 5) + _conv_bn(out, out, 5)
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = out
            size = -(-size // 2)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Linear(channels * size * size, embedding_dim)

    def embedding(self, x: Tensor) -> Tensor:
        return self.embed(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(EmbeddingNetwork):
    def __init__(
        self,
        in_channels: int = 3,
        embedding_dim: int = 32,
        num_logits: int = 10,
        width: int = 32,
    ) -> None:
        super().__init__(embedding_dim, num_logits)
        stem = [
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        blocks = []
        channels = width
        for stage in range(4):
            out = width * 2**stage
            blocks.append(_BasicBlock(channels, out, stride=1 if stage == 0 else 2))
            channels = out
        self.features = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(channels, embedding_dim)

    def embedding(self, x: Tensor) -> Tensor:
        return self.embed(self.features(x))


class EmbeddingOnly(nn.Module):
    """The exported graph: input -> raw embedding."""

    def __init__(self, network: EmbeddingNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:
        return self.network.embedding(x)


def build_network(
    name: str,
    input_shape: tuple[int, int, int],
    embedding_dim: int,
    num_logits: int,
    width: int,
) -> EmbeddingNetwork:
    channels, height, width_px = input_shape
    if name == "lenetpp":
        if height != width_px:
            raise ValueError(f"lenetpp needs square inputs, got {height}x{width_px}")
        return LeNetPP(channels, height, embedding_dim, num_logits, width)
    if name == "resnet":
        return SmallResNet(channels, embedding_dim, num_logits, width)
    raise ValueError(f"unknown network {name!r}; choose lenetpp or resnet")

"""Seeded data augmentation on torch tensors (no torchvision): what the network sees in training.

Works on a batch of pixels ``x`` float [N, C, H, W] in [0, 1] (before the bundle's mean/std
normalisation) and returns a batch of the same shape and range. Per sample, in this order:

1. **random affine** (one bilinear resampling): rotation ±``rotation`` degrees, shear
   ±``shear`` degrees (x axis), isotropic scale in [1 - ``scale``, 1 + ``scale``], shift
   ±``shift`` of the image size on each axis; outside pixels by ``padding`` ("border":
   repeat the edge, "zeros": black);
2. **crop / pad**: pad by ``crop`` of the size on every side (same ``padding``), then cut a
   random H×W window: an integer shift without resampling;
3. **colour jitter**: brightness factor in [1 - ``brightness``, 1 + ``brightness``], contrast
   (around the image mean) in [1 - ``contrast``, 1 + ``contrast``], and for RGB saturation
   (towards the grey value) in [1 - ``saturation``, 1 + ``saturation``];
4. **blur**: with probability ``blur``, a Gaussian blur of sigma uniform in
   [0.1, ``blur_sigma``] pixels;
5. **noise**: additive Gaussian noise of standard deviation uniform in [0, ``noise``];

then clipped to [0, 1]. Every parameter at 0 (``AugmentParams.identity()``) returns the input
unchanged, bit for bit.

Randomness comes only from the ``torch.Generator`` passed in: the trainer seeds one per step
from (seed, epoch, step), so that a resumed run sees the same augmented batches. All random
draws are made for the whole global batch and ``rows`` selects the rows of one process, so N
data-parallel processes augment exactly as one process would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.config import ConfigError

PADDINGS = ("border", "zeros")
# (low, high) of each numeric parameter; a value outside is a ConfigError naming the field.
RANGES: dict[str, tuple[float, float]] = {
    "rotation": (0.0, 180.0),
    "shear": (0.0, 45.0),
    "scale": (0.0, 0.9),
    "shift": (0.0, 0.5),
    "crop": (0.0, 0.5),
    "brightness": (0.0, 1.0),
    "contrast": (0.0, 1.0),
    "saturation": (0.0, 1.0),
    "blur": (0.0, 1.0),
    "blur_sigma": (0.1, 5.0),
    "noise": (0.0, 0.5),
}


@dataclass(frozen=True)
class AugmentParams:
    """Magnitudes of the random transforms (see the module docstring); defaults: mild."""

    rotation: float = 10.0
    shear: float = 10.0
    scale: float = 0.1
    shift: float = 0.1
    crop: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    blur: float = 0.2
    blur_sigma: float = 1.0
    noise: float = 0.02
    padding: str = "border"

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(
                    f"augment_params.{name} must be a number in [{low}, {high}]; got {value!r}"
                )
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(
                    f"augment_params.{name} must be in [{low}, {high}]; got {value!r}"
                )
        if self.padding not in PADDINGS:
            raise ConfigError(
                f"augment_params.padding must be one of {', '.join(PADDINGS)}; got {self.padding!r}"
            )

    @classmethod
    def identity(cls) -> AugmentParams:
        """Every transform off: :func:`augment` returns its input unchanged."""
        return cls(**{name: (0.1 if name == "blur_sigma" else 0.0) for name in RANGES})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AugmentParams:
        """Defaults overridden by ``data``; an unknown key is a ConfigError naming it."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"augment_params must be a mapping of parameters; got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown augment parameter {unknown[0]!r}; known: {', '.join(sorted(names))}"
            )
        return cls(**data)

    def is_identity(self) -> bool:
        return all(getattr(self, name) == 0 for name in RANGES if name != "blur_sigma")


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The generator of one training step: a function of (seed, epoch, step) only."""
    state = np.random.SeedSequence([seed, epoch, step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def augment(
    x: Tensor,
    params: AugmentParams,
    generator: torch.Generator,
    rows: slice | None = None,
    total: int | None = None,
) -> Tensor:
    """Augment ``x`` [n, C, H, W] (float, [0, 1]); returns a new tensor, same shape and range.

    ``total`` is the size of the global batch the random draws are made for (default n) and
    ``rows`` the rows of it that ``x`` holds (default all): one process of N data-parallel
    ones passes its shard and gets exactly the rows a single process would compute.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects float [N, C, H, W] pixels; got {tuple(x.shape)}")
    n, channels, height, width = x.shape
    total = n if total is None else total
    rows = slice(0, n) if rows is None else rows
    if len(range(*rows.indices(total))) != n:
        raise ValueError(f"rows {rows} of a batch of {total} do not hold {n} samples")
    if params.is_identity():
        return x.clone()
    # Every draw is made for the whole global batch, in a fixed order, whether or not a
    # transform is on: the random stream of one transform does not depend on the others.
    angle = torch.deg2rad(_uniform(total, -params.rotation, params.rotation, generator))
    shear = torch.deg2rad(_uniform(total, -params.shear, params.shear, generator))
    zoom = _uniform(total, 1.0 - params.scale, 1.0 + params.scale, generator)
    shift = _uniform(2 * total, -params.shift, params.shift, generator).reshape(total, 2)
    pad_h, pad_w = round(params.crop * height), round(params.crop * width)
    offset_y = torch.randint(0, 2 * pad_h + 1, (total,), generator=generator)
    offset_x = torch.randint(0, 2 * pad_w + 1, (total,), generator=generator)
    bright = _uniform(total, 1.0 - params.brightness, 1.0 + params.brightness, generator)
    contrast = _uniform(total, 1.0 - params.contrast, 1.0 + params.contrast, generator)
    saturate = _uniform(total, 1.0 - params.saturation, 1.0 + params.saturation, generator)
    blurred = torch.rand(total, generator=generator) < params.blur
    sigma = _uniform(total, 0.1, params.blur_sigma, generator)
    noise_std = _uniform(total, 0.0, params.noise, generator)
    noise = torch.randn((total, channels, height, width), generator=generator, dtype=x.dtype)

    def mine(values: Tensor) -> Tensor:
        return values[rows]

    out = x
    if params.rotation or params.shear or params.scale or params.shift:
        out = _affine(out, mine(angle), mine(shear), mine(zoom), mine(shift), params.padding)
    if pad_h or pad_w:
        out = _crop_pad(out, pad_h, pad_w, mine(offset_y), mine(offset_x), params.padding)
    if params.brightness:
        out = out * mine(bright).to(x.dtype).view(n, 1, 1, 1)
    if params.contrast:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = mean + (out - mean) * mine(contrast).to(x.dtype).view(n, 1, 1, 1)
    if params.saturation and channels == 3:
        grey = (out * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)).sum(
            dim=1, keepdim=True
        )
        out = grey + (out - grey) * mine(saturate).to(x.dtype).view(n, 1, 1, 1)
    if params.blur:
        out = _blur(out, mine(sigma), mine(blurred), params.blur_sigma)
    if params.noise:
        out = out + mine(noise) * mine(noise_std).to(x.dtype).view(n, 1, 1, 1)
    return out.clamp(0.0, 1.0)


def _affine(
    x: Tensor, angle: Tensor, shear: Tensor, zoom: Tensor, shift: Tensor, padding: str
) -> Tensor:
    """One bilinear resampling by the inverse map output -> input (affine_grid convention)."""
    n = x.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    tan = torch.tan(shear)
    # forward map A = R(angle) · Sh(shear) · zoom, then shift; the grid needs A^-1.
    a = torch.stack(
        [
            torch.stack([cos, cos * tan - sin], dim=1),
            torch.stack([sin, sin * tan + cos], dim=1),
        ],
        dim=1,
    ) * zoom.view(n, 1, 1)
    inverse = torch.linalg.inv(a)
    # normalised coordinates span [-1, 1]: a shift of f of the size is 2f
    translation = -(inverse @ (2.0 * shift).unsqueeze(2))
    theta = torch.cat([inverse, translation], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _crop_pad(
    x: Tensor, pad_h: int, pad_w: int, offset_y: Tensor, offset_x: Tensor, padding: str
) -> Tensor:
    height, width = x.shape[2:]
    mode = "replicate" if padding == "border" else "constant"
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode)
    return torch.stack(
        [
            padded[i, :, int(y) : int(y) + height, int(xo) : int(xo) + width]
            for i, (y, xo) in enumerate(zip(offset_y, offset_x, strict=True))
        ]
    )


def _blur(x: Tensor, sigma: Tensor, on: Tensor, max_sigma: float) -> Tensor:
    """Separable Gaussian blur per sample; samples with ``on`` false are left as they are."""
    if not bool(on.any()):
        return x
    n, channels, height, width = x.shape
    radius = max(1, math.ceil(3.0 * max_sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # [n, K]
    kernel = kernel.repeat_interleave(channels, dim=0)  # one per (sample, channel)
    flat = x.reshape(1, n * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * channels, 1, 1, -1), groups=n * channels)
    flat = F.conv2d(flat, kernel.view(n * channels, 1, -1, 1), groups=n * channels)
    blurred = flat.reshape(n, channels, height, width)
    return torch.where(on.view(n, 1, 1, 1), blurred, x)

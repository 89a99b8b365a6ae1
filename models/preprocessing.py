"""Images -> network input, per a bundle's :class:`~models.bundle.InputSpec`.

Pixel contract (the same in training, export and the service): apply the EXIF orientation
tag if any, convert to ``spec.color``,
resize the whole image to H×W (no crop) with ``spec.resize``, scale to [0, 1], then
``(x - mean) / std`` per channel; output float32 [N, C, H, W].

Resizing is Pillow's on 8-bit images, so training must preprocess through this module too
(not torchvision) to feed the network exactly what the service will feed it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from models.bundle import InputSpec

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@functools.lru_cache(maxsize=16)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 [C, 256]: what each 8-bit level of each channel becomes, by the same float32
    operations as the formula (so a lookup gives the formula's values to the last bit)."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean_ = np.asarray(mean, dtype=np.float32)
    std_ = np.asarray(std, dtype=np.float32)
    levels = (scaled[None, :] - mean_[:, None]) / std_[:, None]
    levels.flags.writeable = False  # shared by every call with these parameters
    return levels


def _normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], scaled and normalised.

    `(pixels / 255 - mean) / std` per channel, looked up per level: a gather per channel
    instead of three float passes over a broadcast channel axis (several times slower)."""
    levels = _levels(tuple(spec.mean), tuple(spec.std))
    out = np.empty((pixels.shape[0], pixels.shape[3], *pixels.shape[1:3]), dtype=np.float32)
    for channel in range(pixels.shape[3]):
        np.take(levels[channel], pixels[..., channel], out=out[:, channel])
    return out


_EXIF_ORIENTATION = 0x0112
# Pillow's convert() clips 16-bit grey to 8 bits (anything >= 255 turns white): scale instead.
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    wide = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))


def image_to_pixels(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """One image -> uint8 [H, W, C]: converted to ``spec.color`` and resized.

    An EXIF orientation tag is applied first (the image as a viewer shows it), and 16-bit
    grey images (modes ``I;16*`` and ``I``, read as 0..65535) are scaled to 8 bits.
    """
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)  # a camera's "rotate me" tag: show it upright
    if image.mode in _WIDE_GREY_MODES:
        image = _to_8bit_grey(image)
    converted = image.convert(spec.color) if image.mode != spec.color else image
    size = (spec.width, spec.height)  # Pillow sizes are (width, height)
    if converted.size != size:
        converted = converted.resize(size, resample=_RESAMPLE[spec.resize])
    pixels = np.asarray(converted, dtype=np.uint8)
    return pixels.reshape(spec.height, spec.width, spec.channels)


def images_to_array(images: Sequence[Image.Image], spec: InputSpec) -> np.ndarray:
    """Pillow images of any mode and size -> float32 [N, C, H, W] per the pixel contract."""
    if isinstance(images, Image.Image):
        raise TypeError("images_to_array takes a sequence of images; wrap one image in a list")
    if len(images) == 0:
        return np.empty((0, *spec.shape), dtype=np.float32)
    pixels = np.stack([image_to_pixels(image, spec) for image in images])
    return _normalise(pixels, spec)


def pixels_to_array(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 pixels already at H×W -> float32 [N, C, H, W], scaled and normalised.

    Accepts [N, H, W] (one channel) or [N, H, W, C] with C = ``spec.channels``. Pixels of the
    wrong size, channel count or dtype are a ValueError: nothing is resized or converted here.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got dtype {pixels.dtype}")
    c, h, w = spec.shape
    if pixels.ndim == 3 and c == 1:
        pixels = pixels[..., np.newaxis]
    expected = f"[N, {h}, {w}, {c}]" + (f" or [N, {h}, {w}]" if c == 1 else "")
    if pixels.ndim != 4 or pixels.shape[1:] != (h, w, c):
        raise ValueError(f"pixels must have shape {expected}, got {list(pixels.shape)}")
    return _normalise(pixels, spec)

"""Images -> network input, per a bundle's :class:`~models.bundle.InputSpec`.

Pixel contract (the same in training, export and the service): apply the EXIF orientation
tag if any, convert to ``spec.color``,
resize the whole image to H×W (no crop) with ``spec.resize``, scale to [0, 1], then
``(x - mean) / std`` per channel; output float32 [N, C, H, W].

Resizing is Pillow's on 8-bit images, so training must preprocess through this module too
(not torchvision) to feed the network exactly what the service will feed it.
"""

from __future__ import annotations

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


def _normalise(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], scaled and normalised."""
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normalised = (scaled - mean) / std
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=np.float32)


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

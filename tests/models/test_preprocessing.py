import io

import numpy as np
import pytest
from PIL import Image

from models.bundle import InputSpec
from models.preprocessing import _normalise, images_to_array, pixels_to_array

GREY = InputSpec(shape=(1, 4, 6), color="L", mean=(0.25,), std=(0.5,))
RGB = InputSpec(shape=(3, 4, 6), color="RGB", mean=(0.1, 0.2, 0.3), std=(0.2, 0.4, 0.8))


def reference(pixels_nhwc: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The pixel contract written out in float64."""
    x = pixels_nhwc.astype(np.float64) / 255.0
    x = (x - np.array(spec.mean)) / np.array(spec.std)
    return x.transpose(0, 3, 1, 2)


def pil_bilinear_1d(length_out: int, length_in: int) -> np.ndarray:
    """Resampling matrix [out, in] of a triangle filter on pixel centres, as Pillow does:
    output pixel i samples the input at (i + 0.5) * in / out, the filter widens by in / out
    when shrinking (antialiasing), and taps outside the image are dropped, then renormalised.
    """
    scale = length_in / length_out
    support = max(scale, 1.0)
    centres = (np.arange(length_out) + 0.5) * scale
    taps = np.arange(length_in) + 0.5
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_grey_pixels(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(3, 4, 6), dtype=np.uint8)
    out = pixels_to_array(pixels, GREY)
    assert out.dtype == np.float32 and out.shape == (3, 1, 4, 6)
    np.testing.assert_allclose(out, reference(pixels[..., None], GREY), atol=1e-6)
    # [N, H, W, 1] is the same thing
    np.testing.assert_array_equal(pixels_to_array(pixels[..., None], GREY), out)


def test_rgb_pixels(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(2, 4, 6, 3), dtype=np.uint8)
    out = pixels_to_array(pixels, RGB)
    assert out.shape == (2, 3, 4, 6) and out.flags.c_contiguous
    np.testing.assert_allclose(out, reference(pixels, RGB), atol=1e-6)
    # channel 1 of image 0, row 2, column 5 by hand
    assert out[0, 1, 2, 5] == pytest.approx((pixels[0, 2, 5, 1] / 255 - 0.2) / 0.4, abs=1e-6)


def test_images_at_size_match_pixels(rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
    colour = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        images_to_array([Image.fromarray(grey)], GREY),
        reference(grey[None, ..., None], GREY),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        images_to_array([Image.fromarray(colour)], RGB), reference(colour[None], RGB), atol=1e-6
    )


def test_rgb_image_to_grey_uses_luma(rng: np.random.Generator) -> None:
    colour = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    luma = colour.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    out = images_to_array([Image.fromarray(colour)], GREY)
    np.testing.assert_allclose(
        out[0, 0], reference(luma[None, ..., None], GREY)[0, 0], atol=1.01 / 255 / 0.5
    )


def test_grey_image_to_rgb_repeats_the_channel(rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
    out = images_to_array([Image.fromarray(grey)], RGB)
    expected = reference(np.repeat(grey[None, ..., None], 3, axis=3), RGB)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_grey_is_scaled_not_clipped(mode: str) -> None:
    wide = np.array([[0, 257, 32896, 65535, 1000, 60000]] * 4, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image = image if mode == "I;16" else image.convert("I")
    out = images_to_array([image], GREY)
    expected = np.rint(wide / 257.0)  # 0, 1, 128, 255, 4, 233
    np.testing.assert_allclose(out, reference(expected[None, ..., None], GREY), atol=1e-6)
    np.testing.assert_allclose(
        images_to_array([image], RGB),
        reference(np.repeat(expected[None, ..., None], 3, 3), RGB),
        atol=1e-6,
    )


def test_exif_orientation_is_applied(rng: np.random.Generator) -> None:
    # Stored 4 wide x 6 high; orientation 6 means "rotate 90° clockwise to view": 6 x 4.
    stored = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    upright = np.rot90(stored, k=-1)  # clockwise
    assert upright.shape == (4, 6)
    out = images_to_array([loaded], GREY)
    np.testing.assert_allclose(out, reference(upright[None, ..., None], GREY), atol=1e-6)


def test_rgba_and_palette_images_are_converted(rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, size=(4, 6, 4), dtype=np.uint8)
    out = images_to_array([Image.fromarray(rgba, mode="RGBA")], RGB)
    np.testing.assert_allclose(out, reference(rgba[None, ..., :3], RGB), atol=1e-6)
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    assert images_to_array([palette], RGB).shape == (1, 3, 4, 6)


@pytest.mark.parametrize("size", [(3, 2), (12, 8), (5, 3), (2, 7)], ids=str)
def test_resize_is_bilinear_on_pixel_centres(rng: np.random.Generator, size: tuple) -> None:
    # size = (width, height) of the source; the spec wants 6 wide, 4 high.
    grey = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    rows = pil_bilinear_1d(4, size[1])
    cols = pil_bilinear_1d(6, size[0])
    resized = rows @ grey.astype(np.float64) @ cols.T
    out = images_to_array([Image.fromarray(grey)], GREY)
    # Pillow works in 8-bit fixed point and rounds between passes: within 1 grey level.
    np.testing.assert_allclose(
        out[0, 0], reference(resized[None, ..., None], GREY)[0, 0], atol=1.01 / 255 / 0.5
    )


def test_resize_rgb_channels_independently(rng: np.random.Generator) -> None:
    colour = rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)  # 3 wide, 2 high
    rows, cols = pil_bilinear_1d(4, 2), pil_bilinear_1d(6, 3)
    resized = np.stack([rows @ colour[..., c] @ cols.T for c in range(3)], axis=-1)
    out = images_to_array([Image.fromarray(colour)], RGB)
    np.testing.assert_allclose(out, reference(resized[None], RGB), atol=1.01 / 255 / 0.2)


def test_constant_image_stays_constant_after_resize() -> None:
    image = Image.new("L", (50, 13), color=200)
    out = images_to_array([image, image], GREY)
    np.testing.assert_allclose(out, (200 / 255 - 0.25) / 0.5, atol=1e-6)


def test_empty_batch() -> None:
    assert images_to_array([], RGB).shape == (0, 3, 4, 6)


def test_single_image_must_be_wrapped() -> None:
    with pytest.raises(TypeError, match="sequence"):
        images_to_array(Image.new("L", (6, 4)), GREY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pixels", "spec", "message"),
    [
        (np.zeros((1, 4, 6), dtype=np.float32), GREY, "uint8"),
        (np.zeros((1, 4, 5), dtype=np.uint8), GREY, r"\[N, 4, 6, 1\] or \[N, 4, 6\]"),
        (np.zeros((1, 4, 6), dtype=np.uint8), RGB, r"\[N, 4, 6, 3\]"),
        (np.zeros((1, 4, 6, 4), dtype=np.uint8), RGB, r"\[N, 4, 6, 3\]"),
        (np.zeros((4, 6), dtype=np.uint8), GREY, "shape"),
    ],
)
def test_bad_pixels(pixels: np.ndarray, spec: InputSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pixels_to_array(pixels, spec)


@pytest.mark.parametrize("spec", [GREY, RGB])
def test_every_level_equals_the_float32_formula(spec: InputSpec) -> None:
    """Each channel's 256 levels, bit for bit as `(x / 255 - mean) / std` in float32 ops."""
    channels = spec.shape[0]
    pixels = np.broadcast_to(
        np.arange(256, dtype=np.uint8)[None, :, None, None], (1, 256, 1, channels)
    ).copy()
    pixels[..., -1] = pixels[..., -1][:, ::-1]  # the last channel in reverse: not a copy
    direct = pixels.astype(np.float32) / np.float32(255.0)
    direct = (direct - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32
    )
    looked_up = _normalise(pixels, spec)
    np.testing.assert_array_equal(looked_up, direct.transpose(0, 3, 1, 2))
    assert looked_up.dtype == np.float32 and looked_up.flags.c_contiguous

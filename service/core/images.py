"""Decoding uploaded images safely: byte and pixel limits, corrupt and truncated files.

The pixel count is read from the header and checked *before* the pixels are decoded, so a
decompression bomb (a tiny file that inflates to gigabytes) is refused without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, ImageFile

# Pillow's own guard stays on as a second line of defence; ours runs first with the
# configured limit. Truncated files must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


class ImageRejected(ValueError):
    """An upload that is not a usable image; `code` is machine-readable, str() the reason."""

    def __init__(self, code: str, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large


def decode_base64(text: str) -> bytes:
    """Strict base64 (standard alphabet, optional padding); ImageRejected otherwise."""
    if not isinstance(text, str):
        raise ImageRejected("invalid_base64", "image must be a base64 string")
    compact = "".join(text.split())
    if compact.startswith("data:") and "," in compact:  # a data URL
        compact = compact.split(",", 1)[1]
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("invalid_base64", "image is not valid base64") from None


def header_pixels(data: bytes) -> int:
    """The pixel count an image's header declares, without decoding it; 0 if unreadable (the
    decoder then rejects it with its reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # counted below
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                width, height = image.size
    except Exception:  # any unreadable header: decode_image says why
        return 0
    return max(0, width) * max(0, height)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    draft: tuple[str, tuple[int, int]] | None = None,
) -> Image.Image:
    """Bytes -> a fully loaded Pillow image (first frame), or ImageRejected with the reason.

    `draft` (mode, (width, height)): a JPEG is decoded at the smallest scale (1/2 .. 1/8)
    that still covers that size, a fraction of the memory and time of a full decode.
    """
    if len(data) == 0:
        raise ImageRejected("empty_image", "image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected(
            "image_too_large",
            f"image is {len(data)} bytes; the limit is {max_bytes}",
            too_large=True,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageRejected("invalid_image", f"image has size {width}x{height}")
            if width * height > max_pixels:
                raise ImageRejected(
                    "too_many_pixels",
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}",
                    too_large=True,
                )
            if draft is not None and image.format == "JPEG":
                image.draft(*draft)
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(
            "too_many_pixels",
            f"image has too many pixels (the limit is {max_pixels}): {error}",
            too_large=True,
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(
            "invalid_image",
            f"not a recognised image (accepted formats: {', '.join(ALLOWED_FORMATS)})",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        reason = str(error) or type(error).__name__
        code = "truncated_image" if "truncated" in reason.lower() else "invalid_image"
        raise ImageRejected(code, f"image could not be decoded: {reason}") from None
    return image


def check_not_blank(image: Image.Image, color: str) -> None:
    """ImageRejected when every pixel is the same in the model's color mode ("L" or "RGB").

    A blank image carries no identity, yet its embedding can land near an enrolled subject and
    be identified with a high score.
    """
    # Pillow's convert() clips wide grey values to 8 bits, which would make a varied 16-bit
    # image look blank: those single-band modes are checked on their own values.
    wide = image.mode.startswith("I") or image.mode == "F"
    extrema = (image if wide else image.convert(color)).getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(low == high for low, high in bands):
        raise ImageRejected(
            "blank_image", "the image has no content (all pixels are the same value)"
        )


def media_type(data: bytes) -> str:
    """The MIME type of image bytes by their header (nothing is decoded), or
    application/octet-stream when Pillow cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, ValueError, Image.DecompressionBombError):
        return "application/octet-stream"

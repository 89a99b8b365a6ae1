"""``glyphs``: a many-class data set generated here, from fonts that ship inside matplotlib.

Every class is one character (Latin, accented Latin, Greek, Cyrillic letters, digits and
symbols); every sample is that character rendered with Pillow from one of the DejaVu and STIX
TrueType fonts in matplotlib's wheel (``matplotlib.get_data_path()/fonts/ttf``), under a
seeded random distortion (rotation, shear, scale, offset, stroke width, blur, noise), white
on black at 28×28 like MNIST. Nothing is downloaded; the same seed gives the same pixels for
the same Pillow/FreeType build.

Characters that look the same in these fonts (Latin "A", Greek "Α", Cyrillic "А"; "O" and
"0" in several fonts; "l" and "I" in sans fonts) would be one class under two labels: a
character is dropped when its clean renderings are within :data:`DUPLICATE_DISTANCE` (mean
absolute pixel difference, 0-1) of an earlier character's in at least half of the fonts: this
removes the identical shapes (distance 0 to 0.003) and keeps accented letters apart from
their base letters (0.005 and more). Only characters that every font has are used (STIX
lacks most mathematical symbols and arrows, which are therefore not in the list).
"""

from __future__ import annotations

import math
import os
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 28
RENDER = 4 * SIZE  # drawn at 4x and reduced: anti-aliased strokes
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
CHARACTERS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    "ÀÂÄÇÈÉÊËÎÏÑÔÖÙÛÜàâäçèéêëîïñôöùûüßÆæØøŁłŠšŽžĞğŞş"
    "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρστυφχψω"
    "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    "+×÷=<>±∂¬%&@#$€£¥§¶©®†‡?!¿¡{}[]()"
)
SAMPLES_PER_FONT = 2
DUPLICATE_DISTANCE = 0.004


def font_directory() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@cache
def _font(name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(font_directory(), name), size=int(RENDER * 0.62))


@cache
def _has_glyph(name: str, character: str) -> bool:
    from matplotlib import ft2font

    return ft2font.FT2Font(os.path.join(font_directory(), name)).get_char_index(ord(character)) != 0


def _draw(character: str, font_name: str) -> Image.Image:
    """The character on a RENDER×RENDER black canvas, centred on a fixed baseline box.

    Horizontally centred on its own ink; vertically on the font's cap-height box, so that "o"
    stays smaller and lower than "O" (no per-glyph rescaling: size is part of the class).
    """
    font = _font(font_name)
    canvas = Image.new("L", (RENDER, RENDER), 0)
    draw = ImageDraw.Draw(canvas)
    left, _, right, _ = draw.textbbox((0, 0), character, font=font)
    _, cap_top, _, cap_bottom = draw.textbbox((0, 0), "H", font=font)
    x = (RENDER - (right - left)) / 2 - left
    y = (RENDER - (cap_bottom - cap_top)) / 2 - cap_top
    draw.text((x, y), character, fill=255, font=font)
    return canvas


def _distort(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One seeded distortion of a RENDER-sized drawing -> uint8 [SIZE, SIZE]."""
    angle = math.radians(rng.uniform(-12, 12))
    shear = math.radians(rng.uniform(-12, 12))
    zoom = rng.uniform(0.8, 1.1)
    dx, dy = rng.uniform(-0.08, 0.08, size=2) * RENDER
    # inverse map (output -> input) around the centre, as Image.transform wants it
    cos, sin, tan = math.cos(angle), math.sin(angle), math.tan(shear)
    forward = np.array([[cos, cos * tan - sin], [sin, sin * tan + cos]]) * zoom
    inverse = np.linalg.inv(forward)
    centre = np.array([RENDER / 2, RENDER / 2])
    offset = centre - inverse @ (centre + np.array([dx, dy]))
    coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
    image = image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.BILINEAR)
    stroke = int(rng.integers(-1, 3))  # thinner, as drawn, or bolder by up to 2 filter passes
    for _ in range(abs(stroke)):
        image = image.filter(ImageFilter.MaxFilter(3) if stroke > 0 else ImageFilter.MinFilter(3))
    image = image.resize((SIZE, SIZE), Image.LANCZOS)
    radius = rng.uniform(0.0, 0.7)
    if radius > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + rng.normal(0.0, rng.uniform(0.0, 8.0), size=pixels.shape)
    return pixels.round().clip(0, 255).astype(np.uint8)


def _clean(character: str, font_name: str) -> np.ndarray:
    image = _draw(character, font_name).resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(image, dtype=np.float64) / 255.0


@lru_cache(maxsize=1)
def glyph_classes() -> tuple[str, ...]:
    """The characters that are classes: in every font, and no look-alike of an earlier one."""
    candidates = [c for c in dict.fromkeys(CHARACTERS) if all(_has_glyph(f, c) for f in FONTS)]
    kept: list[str] = []
    renders: list[np.ndarray] = []
    for character in candidates:
        image = np.stack([_clean(character, f) for f in FONTS])  # [fonts, SIZE, SIZE]
        if image.max() == 0:
            continue  # nothing drawn
        if any(
            np.median(np.abs(image - other).mean(axis=(1, 2))) < DUPLICATE_DISTANCE
            for other in renders
        ):
            continue
        kept.append(character)
        renders.append(image)
    return tuple(kept)


@lru_cache(maxsize=1)
def generate(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All samples: uint8 pixels [N, 28, 28, 1], class indices [N], and the class characters.

    Each class has ``len(FONTS) * SAMPLES_PER_FONT`` samples; sample (class c, font f, copy k)
    is drawn with the generator seeded by (seed, c, f, k), so adding a class or a font does
    not change the others.
    """
    classes = glyph_classes()
    pixels, labels = [], []
    for index, character in enumerate(classes):
        for font_index, font_name in enumerate(FONTS):
            drawing = _draw(character, font_name)
            for copy in range(SAMPLES_PER_FONT):
                rng = np.random.default_rng([seed, index, font_index, copy])
                pixels.append(_distort(drawing, rng))
                labels.append(index)
    return np.stack(pixels)[..., np.newaxis], np.asarray(labels, dtype=np.int64), classes

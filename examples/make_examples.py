"""Write the quickstart's example images: a few MNIST test digits as 28x28 PNGs.

examples/gallery/<name>/*.png  three samples of each known digit (0-5), the gallery subjects
examples/probes/*.png          one more "three" (mated) and an "eight" (a digit never trained on)

The images come from the `mnist5k` protocol's *test* split, so the default model never saw
them in training. Rerun with: .venv/bin/python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_protocol

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HERE = Path(__file__).resolve().parent


def main() -> None:
    data = load_protocol("mnist5k")
    test = data.test
    by_digit: dict[int, list[np.ndarray]] = {}
    for pixels, digit in zip(test.pixels, test.class_names(), strict=True):
        by_digit.setdefault(int(digit), []).append(pixels)
    for digit in range(6):
        folder = HERE / "gallery" / NAMES[digit]
        folder.mkdir(parents=True, exist_ok=True)
        for index, pixels in enumerate(by_digit[digit][:3], start=1):
            Image.fromarray(pixels[..., 0]).save(folder / f"{index}.png")
    probes = HERE / "probes"
    probes.mkdir(exist_ok=True)
    Image.fromarray(by_digit[3][3][..., 0]).save(probes / "three.png")
    Image.fromarray(by_digit[8][0][..., 0]).save(probes / "eight.png")


if __name__ == "__main__":
    main()

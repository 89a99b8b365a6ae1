"""Open-world protocols (gallery-only classes), the glyphs data set and the open-world gallery."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import GALLERY, KNOWN, NEGATIVE, UNKNOWN, DataError, Split, load_protocol
from training.galleries import closed_world, has_open_world, open_world, side_by_side
from training.glyphs import FONTS, SAMPLES_PER_FONT, glyph_classes


@pytest.fixture(scope="module")
def glyphs():  # type: ignore[no-untyped-def]
    return load_protocol("glyphs")


def _flat(split: Split) -> np.ndarray:
    """A stand-in embedder: the pixels themselves (identifies every sample exactly)."""
    return split.pixels.reshape(len(split), -1).astype(np.float32) + 1.0


def test_glyphs_are_many_distinct_classes_with_default_open_world_roles(glyphs) -> None:  # type: ignore[no-untyped-def]
    p = glyphs.protocol
    classes = glyph_classes()
    assert len(classes) >= 200 and len(set(classes)) == len(classes)
    assert p.open_world and set(p.classes) == set(classes)
    shares = [len(p.known), len(p.negative), len(p.unknown), len(p.gallery)]
    assert shares == [round(0.5 * len(classes)), 22, 44, 44] or sum(shares) == len(classes)
    per_class = len(FONTS) * SAMPLES_PER_FONT
    everything = np.concatenate([glyphs.train.labels, glyphs.val.labels, glyphs.test.labels])
    assert (np.bincount(everything) == per_class).all()
    # gallery-only and unknown classes are never in the training split
    assert set(np.unique(glyphs.train.roles)) == {KNOWN, NEGATIVE}
    for role in (UNKNOWN, GALLERY):
        assert len(glyphs.val.with_roles(role)) == len(glyphs.test.with_roles(role)) > 0
    assert glyphs.train.pixels.shape[1:] == (28, 28, 1)
    assert glyphs.protocol.to_manifest()["gallery"] == list(p.gallery)


def test_glyphs_are_generated_deterministically() -> None:
    from training.glyphs import _distort, _draw

    drawing = _draw("Ж", FONTS[3])
    a = _distort(drawing, np.random.default_rng([0, 1, 2, 3]))
    b = _distort(drawing, np.random.default_rng([0, 1, 2, 3]))
    c = _distort(drawing, np.random.default_rng([0, 1, 2, 4]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (28, 28) and a.max() > 128


def test_open_world_gallery_enrols_the_gallery_classes(glyphs) -> None:  # type: ignore[no-untyped-def]
    setting = open_world(glyphs, _flat)
    p = glyphs.protocol
    assert set(setting.gallery_subjects) == {str(c) for c in p.gallery}
    assert len(setting.gallery_embeddings) == len(glyphs.val.with_roles(GALLERY))
    kinds = setting.probe_kind
    assert (kinds == "mated").sum() == len(glyphs.test.with_roles(GALLERY))
    assert (kinds == "unknown").sum() == len(glyphs.test.with_roles(UNKNOWN))
    assert (kinds == "negative").sum() == len(glyphs.test.with_roles(NEGATIVE))
    assert set(setting.probe_subjects[kinds == "unknown"]) == {str(c) for c in p.unknown}
    # the calibration set is the strangers' validation part, never enrolled nor probed
    np.testing.assert_array_equal(
        setting.calibration_embeddings, _flat(glyphs.val.with_roles(UNKNOWN))
    )
    # the closed world does not probe with the gallery-only classes
    closed = closed_world(glyphs, _flat)
    assert not set(closed.probe_subjects) & {str(c) for c in p.gallery}
    assert has_open_world(glyphs)


def test_open_world_protocol_on_digits_and_side_by_side_table() -> None:
    data = load_protocol("digits", known=[0, 1, 2], negative=[3], unknown=[4, 5], gallery=[6, 7])
    assert data.protocol.classes == (0, 1, 2, 3, 4, 5, 6, 7)
    assert list(data.protocol.role_of(np.arange(8))) == [0, 0, 0, 1, 2, 2, 3, 3]
    reports = {
        "closed_world": closed_world(data, _flat).evaluate(),
        "open_world": open_world(data, _flat).evaluate(),
    }
    table = side_by_side(reports).splitlines()
    assert table[0].startswith("| setting | subjects | rank-1 |")
    closed_row, open_row = table[2], table[3]
    assert closed_row.startswith("| closed world | 3 |") and open_row.startswith(
        "| open world | 2 |"
    )
    rank1 = f"{reports['open_world']['closed_set_accuracy']:.4f}"
    assert open_row.split(" | ")[2] == rank1


NO_STRANGERS = {"known": ["A"], "negative": [], "unknown": [], "gallery": ["B"]}
SHARED = {"known": ["A", "B"], "negative": [], "unknown": ["D"], "gallery": ["B", "C"]}
TWO_SHARED = {"known": ["A"], "negative": ["C"], "unknown": ["C"], "gallery": ["A"]}


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ({"gallery": []}, r"open-world role\(s\) gallery empty"),
        (NO_STRANGERS, r"open-world role\(s\) unknown empty"),
        (SHARED, "class 'B' is both known and gallery$"),
        (TWO_SHARED, "class 'A' is both known and gallery; class 'C' is both negative and unknown"),
        ({"gallery": ["not a glyph"]}, "gallery class 'not a glyph' does not exist"),
    ],
)
def test_bad_open_world_protocols_name_the_role_or_classes(roles: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_protocol("glyphs", **roles)


def test_builtin_digits_become_open_world_only_when_asked() -> None:
    assert not load_protocol("digits").protocol.open_world
    with pytest.raises(DataError, match="gallery empty"):
        load_protocol("digits", gallery=[])
    with pytest.raises(DataError, match="unknown empty"):
        load_protocol("digits", negative=[], unknown=[], gallery=[6, 7, 8, 9])


def _write(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (12, 12), value).save(path)


def test_image_folder_gallery_role(tmp_path: Path) -> None:
    for role, subjects in {"known": "ab", "unknown": "cd", "gallery": "ef"}.items():
        for subject in subjects:
            for i in range(4):
                _write(tmp_path / role / subject / f"{i}.png", 20 * i + ord(subject))
    data = load_protocol(str(tmp_path), image_size=8, color="L")
    assert data.protocol.gallery == ("gallery/e", "gallery/f")
    assert not (data.train.roles == GALLERY).any()
    setting = open_world(data, _flat)
    assert set(setting.gallery_subjects) == {"gallery/e", "gallery/f"}
    for subject in "ef":
        for path in (tmp_path / "gallery" / subject).iterdir():
            path.unlink()
        (tmp_path / "gallery" / subject).rmdir()
    with pytest.raises(DataError, match="open-world role\\(s\\) gallery empty"):
        load_protocol(str(tmp_path), image_size=8, color="L")

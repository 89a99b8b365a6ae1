"""Tiny run -> export -> onnxruntime parity -> models.load_bundle, and the bundle's contents."""

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from models.bundle import BundleError, load_bundle
from models.calibration import realised_fpir
from training.cli import evaluate_main
from training.config import TrainConfig
from training.data import ProtocolData
from training.export import ExportError, export_run
from training.trainer import load_run, train


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, small_data: ProtocolData):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("export")
    config = TrainConfig(loss="mel", width=4, embedding_dim=8, epochs=1, batch_size=16, max_steps=6)
    train(config, root / "run", progress=False, data=small_data)
    run = load_run(root / "run", data=small_data)
    bundle = export_run(root / "run", root / "bundle", version="7", run=run)
    return run, bundle


def test_bundle_loads_and_describes_the_run(exported) -> None:  # type: ignore[no-untyped-def]
    _, bundle = exported
    loaded = load_bundle(bundle.path)
    m = loaded.manifest
    assert m.model_id == "lenetpp-mel@7"
    assert m.embedding_dim == 8 and m.loss == "mel" and m.output == "embedding"
    assert m.input.shape == (1, 28, 28) and m.input.color == "L"
    assert m.protocol["known"] == [0, 1, 2, 3, 4, 5]
    assert m.protocol["negative"] == [6, 7] and m.protocol["unknown"] == [8, 9]
    assert 0 <= m.parity_max_abs_diff <= 1e-4
    # calibration set: the validation unknowns (12 per class in small_data)
    assert loaded.load_calibration().shape == (24, 8)
    assert m.extra["calibration_searches"] == 24
    assert [row["fpir"] for row in m.calibration] == [0.001, 0.01, 0.1, 1.0]
    assert "closed_set_accuracy" in m.metrics["closed_world"]


def test_onnx_matches_torch_for_any_batch_size(exported) -> None:  # type: ignore[no-untyped-def]
    run, bundle = exported
    session = onnxruntime.InferenceSession(
        str(bundle.onnx_path), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].name == "input"
    for n in (1, 5, 33):
        x = run.data.test.inputs(slice(0, n))
        (onnx_out,) = session.run(["embedding"], {"input": x})
        with torch.no_grad():
            torch_out = run.network.eval().embedding(torch.from_numpy(x)).numpy()
        assert onnx_out.shape == (n, 8)
        np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=0)


def test_onnx_names_no_local_path_and_is_reproducible(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run, bundle = exported
    checkout = str(Path(__file__).resolve().parents[2])
    assert checkout.encode() not in bundle.onnx_path.read_bytes()
    again = export_run(run.path, tmp_path / "again", version="7", run=run)
    assert again.manifest.onnx_sha256 == bundle.manifest.onnx_sha256


def test_calibration_table_holds_on_its_own_set(exported) -> None:  # type: ignore[no-untyped-def]
    run, bundle = exported
    from models.scoring import SubjectScorer
    from training.galleries import OnnxEmbedder, calibration_split

    embedder = OnnxEmbedder(bundle.onnx_path)
    known_train = run.data.train.with_roles(0)
    gallery = SubjectScorer(embedder(known_train), [str(c) for c in known_train.class_names()])
    _, scores = gallery.top1(embedder(calibration_split(run.data)))
    for row in bundle.manifest.calibration:
        assert realised_fpir(scores, row["threshold"]) <= row["fpir"]


def test_parity_failure_is_an_error(exported, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import training.export

    run, bundle = exported
    # a graph that does not match the network: the exported model of other weights
    perturbed = load_run(run.path, data=run.data)
    with torch.no_grad():
        perturbed.network.embed.bias.add_(0.5)
    monkeypatch.setattr(
        training.export, "export_onnx", lambda net, shape, path: shutil.copy(bundle.onnx_path, path)
    )
    with pytest.raises(ExportError, match=r"differ by up to \d\.\d\de-0[1-3] on a batch of 64"):
        export_run(run.path, tmp_path / "b", run=perturbed)
    assert not (tmp_path / "b").exists()


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_parity_is_measured_on_the_direction_not_the_norm(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Large raw embeddings (ArcFace reaches norms near 1,000) pass when their directions agree."""
    from training.export import PARITY_BATCH, export_onnx

    run, _ = exported
    scaled = load_run(run.path, data=run.data)
    with torch.no_grad():  # a power of two: the same network up to an exact scale
        scaled.network.embed.weight.mul_(2.0**16)
        scaled.network.embed.bias.mul_(2.0**16)
    inputs = run.data.val.inputs(slice(0, PARITY_BATCH))
    export_onnx(scaled.network, run.data.protocol.input.shape, tmp_path / "scaled.onnx")
    (onnx_out,) = onnxruntime.InferenceSession(
        str(tmp_path / "scaled.onnx"), providers=["CPUExecutionProvider"]
    ).run(["embedding"], {"input": inputs})
    with torch.no_grad():
        torch_out = scaled.network.eval().embedding(torch.from_numpy(inputs)).numpy()
    # float32 rounding of the large raw values alone is above the default tolerance
    assert np.abs(onnx_out.astype(np.float64) - torch_out).max() > 1e-4
    bundle = export_run(run.path, tmp_path / "b", run=scaled)
    expected = np.abs(_unit(onnx_out) - _unit(torch_out)).max()
    assert bundle.manifest.parity_max_abs_diff < 1e-5
    assert bundle.manifest.parity_max_abs_diff == pytest.approx(expected, abs=2e-7)


def test_bundle_with_wrong_checksum_is_refused(exported, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    _, bundle = exported
    copy = tmp_path / "tampered"
    shutil.copytree(bundle.path, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)
    assert evaluate_main([str(copy), "--out", str(tmp_path / "eval")]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_evaluate_a_bundle_writes_both_gallery_reports(exported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    _, bundle = exported
    assert evaluate_main([str(bundle.path), "--out", str(tmp_path / "eval")]) == 0
    closed = json.loads((tmp_path / "eval" / "report.json").read_text())
    opened = json.loads((tmp_path / "eval" / "open_world" / "report.json").read_text())
    # closed world: the 6 known digits enrolled; open world: the 2 unknown digits
    assert closed["counts"]["gallery_subjects"] == 6
    assert opened["counts"]["gallery_subjects"] == 2
    assert closed["counts"]["unknown"] == 500 and closed["counts"]["calibration"] == 500
    assert (tmp_path / "eval" / "dir_fpir.png").stat().st_size > 0
    assert "open_world/report.md" in (tmp_path / "eval" / "report.md").read_text()


def test_unseen_digits_enrols_and_probes_as_documented(exported) -> None:  # type: ignore[no-untyped-def]
    from sklearn.datasets import load_digits

    from training.unseen_digits import evaluate_unseen

    _, bundle = exported
    known = [int(c) for c in bundle.manifest.protocol["known"]]
    counts = np.bincount(load_digits().target, minlength=10)
    result = evaluate_unseen(str(bundle.path), enrol=5, repeats=2)
    assert result["mated"] == counts[known].sum() - 5 * len(known)
    assert result["strangers"] == counts.sum() - counts[known].sum()
    assert result["calibration"] == len(bundle.load_calibration())
    for key, value in result["mean"].items():
        assert 0.0 <= value <= 1.0, key
    # the calibrated threshold of a larger FPIR accepts at least as many mated probes
    assert result["mean"]["dir@0.1"] >= result["mean"]["dir@0.01"]

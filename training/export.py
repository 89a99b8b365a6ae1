"""Export a training run to a model bundle (models/bundle.py): ONNX, parity, calibration.

Steps: the run's network -> ``model.onnx`` (torch.onnx, dynamo exporter; input ``"input"``
float32 [N, C, H, W] with a dynamic batch axis, output ``"embedding"`` [N, D], the raw
embedding) -> parity check: onnxruntime and PyTorch on a batch of validation images, the
largest absolute difference of their L2-normalised embeddings goes into the manifest and above
``tolerance`` the export fails -> calibration embeddings (validation unknowns, see
:func:`training.galleries.calibration_split`, embedded by the ONNX model, i.e. exactly as
the service will embed) -> the calibration table against the
closed-world gallery (known classes, training samples) -> closed-world evaluation metrics ->
:func:`models.bundle.write_bundle` (atomic; verifies the bundle loads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from models.bundle import Bundle, Manifest, check_bundle_target, write_bundle
from models.scoring import l2_normalise
from training.calibration import SmallCalibrationWarning
from training.galleries import (
    CALIBRATION_SET,
    FPIRS,
    OnnxEmbedder,
    calibration_split,
    closed_world,
    summary,
)
from training.networks import EmbeddingNetwork, EmbeddingOnly
from training.trainer import TrainedRun, load_run

PARITY_BATCH = 64


class ExportError(RuntimeError):
    """The export failed a check (e.g. ONNX and PyTorch disagree)."""


class ParityError(ExportError):
    """onnxruntime and PyTorch embeddings differ by more than the tolerance."""

    def __init__(self, difference: float, tolerance: float, images: int) -> None:
        super().__init__(
            f"ONNX and PyTorch normalised embeddings differ by up to {difference:.2e} on a "
            f"batch of {images} validation images, above the tolerance {tolerance:.1e}"
        )
        self.difference = difference
        self.tolerance = tolerance


def export_onnx(network: EmbeddingNetwork, input_shape: tuple[int, int, int], path: Path) -> None:
    """Write the embedding graph to ``path`` as one self-contained ONNX file."""
    module = EmbeddingOnly(network).eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports its progress on stdout and warns about optional torchvision ops;
    # keep the command's own output clean.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["input"],
            output_names=["embedding"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    _strip_source_locations(path)


def _strip_source_locations(path: Path) -> None:
    """Drop the exporter's per-node stack traces and doc strings.

    They name files on the exporting machine (its checkout and venv paths): the bundle would
    leak them and differ byte for byte between two checkouts of the same run.
    """
    model = onnx.load(str(path))
    node_lists = [model.graph.node, *(function.node for function in model.functions)]
    while node_lists:
        for node in node_lists.pop():
            del node.metadata_props[:]
            node.doc_string = ""
            for attribute in node.attribute:  # control flow nodes carry subgraphs
                if attribute.HasField("g"):
                    node_lists.append(attribute.g.node)
                node_lists.extend(graph.node for graph in attribute.graphs)
    onnx.save(model, str(path))


@torch.no_grad()
def parity_max_abs_diff(network: EmbeddingNetwork, onnx_path: Path, inputs: np.ndarray) -> float:
    """The largest |onnxruntime - PyTorch| over the L2-normalised embeddings of ``inputs``.

    Normalised, because galleries compare directions only (cosine) and the raw norm is
    whatever the loss leaves it: ArcFace's embeddings reach norms near 1,000, where float32
    rounding alone moves raw values by 2e-4 in either implementation, while their directions
    agree to 3e-7 as for every other loss (docs/training.md, Export).
    """
    network.eval()
    expected = network.embedding(torch.from_numpy(inputs)).numpy()
    actual = OnnxEmbedder(onnx_path).run(inputs)
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} != PyTorch {expected.shape}")
    difference = l2_normalise(actual, allow_zero=True) - l2_normalise(expected, allow_zero=True)
    return float(np.abs(difference.astype(np.float64)).max())


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    tolerance: float = 1e-4,
    overwrite: bool = False,
    run: TrainedRun | None = None,
) -> Bundle:
    check_bundle_target(out_dir, overwrite=overwrite)  # before minutes of work, not after
    run = run or load_run(run_dir)
    network = run.network.cpu().eval()
    data = run.data
    spec = data.protocol.input
    with tempfile.TemporaryDirectory(prefix="opengallery-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(network, spec.shape, onnx_path)

        # Parity on real inputs, with a batch size the graph never saw at export time.
        parity_inputs = data.val.inputs(slice(0, PARITY_BATCH))
        diff = parity_max_abs_diff(network, onnx_path, parity_inputs)
        if not diff <= tolerance:
            raise ParityError(diff, tolerance, len(parity_inputs))

        embedder = OnnxEmbedder(onnx_path)
        calibration = embedder(calibration_split(data))
        if len(calibration) == 0:
            raise ExportError("no validation unknowns or negatives to calibrate with")
        with warnings.catch_warnings():
            # unsupported FPIR rows are kept and marked in the manifest
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            report = closed_world(data, embedder).evaluate(FPIRS)
        config = run.config
        manifest = Manifest(
            name=name or f"{config.network}-{config.loss}",
            version=version,
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
            embedding_dim=network.embedding_dim,
            input=spec,
            output="embedding",
            metric="cosine",
            loss=config.loss,
            protocol={
                **data.protocol.to_manifest(),
                "split": list(config.split),
                "split_seed": config.split_seed,
            },
            metrics={"closed_world": summary(report)},
            calibration=report["calibration"],
            onnx_sha256="",
            parity_max_abs_diff=diff,
            extra={
                "calibration_set": f"{CALIBRATION_SET} of protocol {data.protocol.name} "
                "(non-mated searches against the known classes' training samples)",
                "calibration_searches": len(calibration),
                "training": _training_summary(run),
            },
        )
        return write_bundle(out_dir, manifest, onnx_path, calibration, overwrite=overwrite)


def _training_summary(run: TrainedRun) -> dict[str, Any]:
    config = run.config
    return {
        "network": config.network,
        "width": config.width,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "schedule": config.schedule,
        "seed": config.seed,
        "loss_params": config.loss_params,
        "augment": (dataclasses.asdict(config.augment_parameters()) if config.augments() else None),
        "torch": torch.__version__,
    }

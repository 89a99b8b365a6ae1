"""The two gallery settings of a protocol, built from embeddings, for training/evaluate.py.

- **closed world**: the gallery enrols the *known* (training) classes with their training
  samples; mated probes are the test samples of the known classes; non-mated probes are the
  test negatives ("negative") and the test unknowns ("unknown"); the calibration set is the
  validation unknowns (the set a bundle ships in calibration.npz, see
  :func:`calibration_split`).
- **open world**: the gallery enrols subjects the network never saw.
  With an open-world protocol (gallery classes): the *gallery* classes with their validation
  samples; mated probes are their test samples; non-mated probes are the test negatives
  ("negative") and the test unknowns, strangers never trained on nor enrolled ("unknown");
  the calibration set is the validation unknowns, as in the closed world.
  Otherwise the *unknown* classes are enrolled (validation samples; test samples are the
  mated probes); non-mated probes are the test negatives ("negative") and the test samples of
  the known training classes, which are not enrolled here (reported under "unknown"); the
  calibration set is the validation negatives + validation known samples.

An :class:`Embedder` maps a :class:`~training.data.Split` to raw embeddings [N, D]: with the
PyTorch network of a run (:class:`TorchEmbedder`) or the ONNX model of a bundle
(:class:`OnnxEmbedder`, onnxruntime, the service's path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from training.data import GALLERY, KNOWN, NEGATIVE, UNKNOWN, ProtocolData, Split
from training.evaluate import evaluate_gallery, write_report

FPIRS = (1e-3, 1e-2, 1e-1, 1.0)


class Embedder(Protocol):
    def __call__(self, split: Split) -> np.ndarray: ...


class TorchEmbedder:
    def __init__(self, network: Any, batch_size: int = 256) -> None:
        self.network = network
        self.batch_size = batch_size

    def __call__(self, split: Split) -> np.ndarray:
        from training.trainer import embed

        return embed(self.network, split, self.batch_size)[0]


class OnnxEmbedder:
    def __init__(self, onnx_path: str | Path, output: str = "embedding", batch_size: int = 256):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.output = output
        self.batch_size = batch_size

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {"input": inputs})[0]

    def __call__(self, split: Split) -> np.ndarray:
        parts = [
            self.run(split.inputs(slice(start, start + self.batch_size)))
            for start in range(0, len(split), self.batch_size)
        ]
        dim = self.session.get_outputs()[0].shape[-1]
        return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


@dataclass
class GallerySetting:
    """Arrays for :func:`training.evaluate.evaluate_gallery`."""

    name: str
    gallery_embeddings: np.ndarray
    gallery_subjects: np.ndarray
    probe_embeddings: np.ndarray
    probe_subjects: np.ndarray
    probe_kind: np.ndarray
    calibration_embeddings: np.ndarray

    def evaluate(self, fpirs: Sequence[float] = FPIRS) -> dict[str, Any]:
        return evaluate_gallery(
            self.gallery_embeddings,
            self.gallery_subjects,
            self.probe_embeddings,
            self.probe_subjects,
            self.probe_kind,
            self.calibration_embeddings,
            fpirs,
        )


def _subjects(split: Split) -> np.ndarray:
    return np.array([str(c) for c in split.class_names()])


def _probes(
    mated: Split, negatives: Split, others: Split, embedder: Embedder
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [(mated, "mated"), (negatives, "negative"), (others, "unknown")]
    parts = [(s, k) for s, k in parts if len(s)]
    embeddings = np.concatenate([embedder(s) for s, _ in parts])
    subjects = np.concatenate([_subjects(s) for s, _ in parts])
    kinds = np.concatenate([np.full(len(s), k) for s, k in parts])
    return embeddings, subjects, kinds


def _stack(embedder: Embedder, *splits: Split) -> np.ndarray:
    return np.concatenate([embedder(s) for s in splits if len(s)])


CALIBRATION_SET = "validation unknowns"


def calibration_split(data: ProtocolData) -> Split:
    """The bundle's calibration set: the validation unknowns (validation negatives if none).

    Not the negatives when there are unknowns: the losses that train on negatives learn to
    score exactly those classes low, so thresholds calibrated on them accept too many real
    unknowns (measured in docs/training.md).
    """
    unknowns = data.val.with_roles(UNKNOWN)
    return unknowns if len(unknowns) else data.val.with_roles(NEGATIVE)


def closed_world(data: ProtocolData, embedder: Embedder) -> GallerySetting:
    gallery = data.train.with_roles(KNOWN)
    probes = _probes(
        data.test.with_roles(KNOWN),
        data.test.with_roles(NEGATIVE),
        data.test.with_roles(UNKNOWN),
        embedder,
    )
    return GallerySetting(
        "closed_world",
        embedder(gallery),
        _subjects(gallery),
        *probes,
        embedder(calibration_split(data)),
    )


def open_world(data: ProtocolData, embedder: Embedder) -> GallerySetting:
    if data.protocol.open_world:
        enrolled = data.val.with_roles(GALLERY)
        probes = _probes(
            data.test.with_roles(GALLERY),
            data.test.with_roles(NEGATIVE),
            data.test.with_roles(UNKNOWN),
            embedder,
        )
        return GallerySetting(
            "open_world",
            embedder(enrolled),
            _subjects(enrolled),
            *probes,
            embedder(calibration_split(data)),
        )
    gallery = data.val.with_roles(UNKNOWN)
    if len(gallery) == 0:
        raise ValueError(
            f"protocol {data.protocol.name!r} has no unknown classes to enrol in an open-world "
            "gallery"
        )
    probes = _probes(
        data.test.with_roles(UNKNOWN),
        data.test.with_roles(NEGATIVE),
        data.test.with_roles(KNOWN),
        embedder,
    )
    calibration = _stack(embedder, data.val.with_roles(NEGATIVE), data.val.with_roles(KNOWN))
    return GallerySetting("open_world", embedder(gallery), _subjects(gallery), *probes, calibration)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a report (for manifests and the comparison table)."""
    out: dict[str, Any] = {"closed_set_accuracy": report["closed_set_accuracy"]}
    for kind, metrics in report["open_set"].items():
        out[kind] = {
            "auroc": metrics["auroc"],
            "fpr_at_95tpr": metrics["fpr_at_tpr"],
            "oscr_area": metrics["oscr_area"],
            "dir_at_fpir": {f"{row['fpir']:g}": row["dir"] for row in metrics["dir"]},
        }
    out["operating_points"] = [
        {
            "fpir": p["fpir"],
            "threshold": p["threshold"],
            "dir": p["dir"],
            "realised_fpir": p["realised_fpir"],
            "supported": p["supported"],
        }
        for p in report["operating_points"]
    ]
    return out


def evaluate_both(
    data: ProtocolData, embedder: Embedder, out_dir: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Closed- and open-world reports (written to OUT and OUT/open_world when given)."""
    reports = {"closed_world": closed_world(data, embedder).evaluate()}
    if has_open_world(data):
        reports["open_world"] = open_world(data, embedder).evaluate()
    if out_dir is not None:
        out = Path(out_dir)
        write_report(reports["closed_world"], out)
        if "open_world" in reports:
            write_report(reports["open_world"], out / "open_world")
            enrolled = "gallery" if data.protocol.open_world else "unknown"
            with open(out / "report.md", "a", encoding="utf-8") as handle:
                handle.write(
                    f"\n## Open-world gallery\n\nEnrols the {enrolled} classes (never trained "
                    "on): see [open_world/report.md](open_world/report.md).\n\n"
                    + side_by_side(reports)
                )
    return reports


def has_open_world(data: ProtocolData) -> bool:
    """Whether the data has what an open-world gallery needs (classes to enrol and probe)."""
    role = GALLERY if data.protocol.open_world else UNKNOWN
    return bool(len(data.val.with_roles(role)) and len(data.test.with_roles(role)))


SIDE_BY_SIDE_FPIRS = (1e-2, 1e-1)


def side_by_side(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown: each gallery setting's rank-1 and, per target FPIR, the DIR at the calibrated
    threshold with the FPIR it realises on the held-out unknowns, and the oracle DIR."""
    header = "| setting | subjects | rank-1 |"
    rule = "|---|---|---|"
    for fpir in SIDE_BY_SIDE_FPIRS:
        header += f" DIR @ {fpir:g} (calibrated) | realised FPIR | DIR @ {fpir:g} (oracle) |"
        rule += "---|---|---|"
    lines = [header, rule]
    for setting, report in reports.items():
        cells = [
            setting.replace("_", " "),
            str(report["counts"]["gallery_subjects"]),
            f"{report['closed_set_accuracy']:.4f}",
        ]
        oracle = report["open_set"].get("unknown", {}).get("dir", [])
        for fpir in SIDE_BY_SIDE_FPIRS:
            points = report["operating_points"]
            point = next((p for p in points if np.isclose(p["fpir"], fpir)), None)
            row = next((r for r in oracle if np.isclose(r["fpir"], fpir)), None)
            if point is None:
                cells += ["-", "-", "-"]
                continue
            mark = "" if point["supported"] else " *"
            realised = point["realised_fpir"].get("unknown", float("nan"))
            cells += [
                f"{point['dir']:.4f}{mark}",
                f"{realised:.4f}",
                "-" if row is None else f"{row['dir']:.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nRealised FPIR: on the held-out unknowns (strangers). * fewer than 10/FPIR "
        "calibration searches.\n"
    )
    return "\n".join(lines) + "\n" + note

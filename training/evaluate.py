"""Gallery-based open-set evaluation from embeddings (numpy only, no torch).

The caller embeds the data (with the network or the ONNX bundle) and hands over arrays::

    from training.evaluate import evaluate_gallery, write_report

    report = evaluate_gallery(
        gallery_embeddings, gallery_subjects,      # [G, D], [G]: the enrolled samples
        probe_embeddings, probe_subjects, probe_kind,  # [P, D], [P], [P]
        calibration_embeddings,                    # [M, D]: non-mated, none enrolled
        fpirs=(1e-3, 1e-2, 1e-1, 1.0), scoring="max", tpr=0.95,
    )
    paths = write_report(report, "runs/NAME/eval")  # report.json, report.md, *.png

``probe_kind[i]`` is ``"mated"`` (its subject ``probe_subjects[i]`` is enrolled),
``"negative"`` (a known unknown: a class used as negatives in training) or ``"unknown"``
(an unknown unknown: a class never seen); the subject of a non-mated probe is ignored. The
kinds are trusted: they decide which scores are mated and which are not.

Closed-world gallery: enrol the known training classes and probe with their test samples.
Open-world gallery: enrol subjects the network never saw (e.g. half the samples of each
held-out class) and probe with the other half. Both are the same call.

What the report holds (a JSON-ready dict, see :func:`evaluate_gallery`):

- ``closed_set_accuracy``: rank-1 identification rate of the mated probes;
- per non-mated kind (``"unknown"``, ``"negative"``, whichever are present), the mated
  probes vs that kind: ``auroc``, ``fpr_at_tpr`` (at ``tpr``), ``oscr_area`` and the
  ``oscr_curve``, the ``dir_fpir_curve``, and ``dir``: DIR at each target FPIR with the
  threshold calibrated on that kind's own top-1 scores (the literature's DIR@FPIR, an
  oracle: it knows the test non-mated scores);
- ``calibration``: the manifest's FPIR -> threshold table, calibrated on the calibration
  set (:mod:`training.calibration`);
- ``operating_points``: for each target FPIR, the calibrated threshold, the DIR it gives,
  and the FPIR it *realises* on the held-out unknowns and negatives: how far the deployed
  system lands from the target;
- ``score_histogram``: top-1 scores of mated probes, unknowns and negatives on shared bins.

All scores are top-1 cosine similarities (higher = more known); a probe is accepted as
known when its score >= the threshold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import min_searches_for_fpir, realised_fpir
from models.scoring import DEFAULT_SCORING, Scoring, SubjectScorer
from training.calibration import DEFAULT_FPIRS, calibrate_gallery
from training.metrics import (
    auroc,
    closed_set_accuracy,
    detection_rate,
    dir_at_fpir,
    dir_fpir_curve,
    fpr_at_tpr,
    oscr_area,
    oscr_curve,
)

PROBE_KINDS = ("mated", "negative", "unknown")
NONMATED_KINDS = ("unknown", "negative")


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _json_label(value: Any) -> Any:
    """json.dumps fallback: numpy scalars (e.g. subject labels) as Python values."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def evaluate_gallery(
    gallery_embeddings: Any,
    gallery_subjects: Any,
    probe_embeddings: Any,
    probe_subjects: Any,
    probe_kind: Any,
    calibration_embeddings: Any,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    *,
    scoring: Scoring = DEFAULT_SCORING,
    tpr: float = 0.95,
    histogram_bins: int = 50,
) -> dict[str, Any]:
    """Enrol the gallery, search every probe and the calibration set, and measure.

    Raises ValueError for mismatched shapes, non-finite embeddings, an unknown probe kind,
    no mated probe, no non-mated probe, or a mated probe whose subject is not enrolled.
    """
    gallery = SubjectScorer(gallery_embeddings, gallery_subjects, scoring)
    kinds = np.asarray(probe_kind)
    subjects = np.asarray(probe_subjects)
    probes = np.asarray(probe_embeddings)
    if kinds.ndim != 1 or subjects.shape != kinds.shape or probes.shape[:1] != kinds.shape:
        raise ValueError(
            f"probe embeddings, subjects and kinds must have the same length, got "
            f"{list(probes.shape)}, {list(subjects.shape)}, {list(kinds.shape)}"
        )
    bad_kinds = sorted(set(kinds.tolist()) - set(PROBE_KINDS))
    if bad_kinds:
        raise ValueError(f"probe_kind must be one of {list(PROBE_KINDS)}, got {bad_kinds}")
    mated = kinds == "mated"
    if not mated.any():
        raise ValueError("no mated probe: nothing to identify")
    present = [kind for kind in NONMATED_KINDS if (kinds == kind).any()]
    if not present:
        raise ValueError("no non-mated probe ('unknown' or 'negative'): open-set metrics need one")
    not_enrolled = sorted(set(subjects[mated].tolist()) - set(gallery.subjects.tolist()))
    if not_enrolled:
        raise ValueError(
            f"{len(not_enrolled)} mated probe subject(s) are not in the gallery, e.g. "
            f"{not_enrolled[:5]}"
        )

    top1_subject, top1_score = gallery.top1(probes)
    mated_scores = top1_score[mated].astype(np.float64)
    mated_correct = top1_subject[mated] == subjects[mated]
    nonmated_scores = {kind: top1_score[kinds == kind].astype(np.float64) for kind in present}
    calibration = calibrate_gallery(calibration_embeddings, gallery, fpirs)

    open_set = {
        kind: _open_set_metrics(mated_scores, mated_correct, scores, calibration, tpr)
        for kind, scores in nonmated_scores.items()
    }
    operating_points = [
        {
            **row,
            "dir": detection_rate(mated_scores, mated_correct, row["threshold"]),
            "realised_fpir": {
                kind: realised_fpir(scores, row["threshold"])
                for kind, scores in nonmated_scores.items()
            },
        }
        for row in calibration
    ]
    all_scores = np.concatenate([mated_scores, *nonmated_scores.values()])
    edges = np.histogram_bin_edges(all_scores, bins=histogram_bins)
    histogram = {"edges": _floats(edges)}
    for kind, scores in {"mated": mated_scores, **nonmated_scores}.items():
        histogram[kind] = [int(c) for c in np.histogram(scores, bins=edges)[0]]

    return {
        "settings": {"scoring": scoring, "fpirs": [r["fpir"] for r in calibration], "tpr": tpr},
        "counts": {
            "gallery_subjects": int(gallery.subjects.size),
            "gallery_samples": int(gallery.num_samples),
            "mated": int(mated.sum()),
            **{kind: int((kinds == kind).sum()) for kind in NONMATED_KINDS},
            "calibration": int(np.asarray(calibration_embeddings).shape[0]),
        },
        "closed_set_accuracy": closed_set_accuracy(top1_subject[mated], subjects[mated]),
        "open_set": open_set,
        "calibration": calibration,
        "operating_points": operating_points,
        "score_histogram": histogram,
    }


def _open_set_metrics(
    mated_scores: np.ndarray,
    mated_correct: np.ndarray,
    nonmated_scores: np.ndarray,
    calibration: list[dict[str, Any]],
    tpr: float,
) -> dict[str, Any]:
    fpr, ccr, _ = oscr_curve(mated_scores, mated_correct, nonmated_scores)
    curve_fpir, curve_dir, _ = dir_fpir_curve(mated_scores, mated_correct, nonmated_scores)
    oracle = []
    for row in calibration:
        dir_, threshold = dir_at_fpir(mated_scores, mated_correct, nonmated_scores, row["fpir"])
        oracle.append(
            {
                "fpir": row["fpir"],
                "threshold": threshold,
                "dir": dir_,
                "supported": nonmated_scores.size >= min_searches_for_fpir(row["fpir"]),
            }
        )
    return {
        "auroc": auroc(mated_scores, nonmated_scores),
        "fpr_at_tpr": fpr_at_tpr(mated_scores, nonmated_scores, tpr),
        "oscr_area": oscr_area(mated_scores, mated_correct, nonmated_scores),
        "oscr_curve": {"fpr": _floats(fpr), "ccr": _floats(ccr)},
        "dir_fpir_curve": {"fpir": _floats(curve_fpir), "dir": _floats(curve_dir)},
        "dir": oracle,
    }


# ---------------------------------------------------------------------------------------------
# Report files


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, report.md, dir_fpir.png, scores.png and oscr.png under ``out_dir``.

    Returns the paths by name ("json", "markdown", "dir_fpir", "scores", "oscr").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "dir_fpir": out / "dir_fpir.png",
        "scores": out / "scores.png",
        "oscr": out / "oscr.png",
    }
    text = json.dumps(report, indent=2, allow_nan=False, default=_json_label)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    _plot_dir_fpir(report, paths["dir_fpir"])
    _plot_scores(report, paths["scores"])
    _plot_oscr(report, paths["oscr"])
    paths["markdown"].write_text(_markdown(report, paths), encoding="utf-8")
    return paths


def _figure() -> Any:
    # Figure without pyplot: no global backend state, renders with Agg when saved.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _plot_dir_fpir(report: dict[str, Any], path: Path) -> None:
    figure, axes = _figure()
    for kind, metrics in report["open_set"].items():
        fpir = np.asarray(metrics["dir_fpir_curve"]["fpir"])
        dir_ = np.asarray(metrics["dir_fpir_curve"]["dir"])
        keep = fpir > 0  # a log axis has no 0
        axes.step(fpir[keep], dir_[keep], where="post", label=f"vs {kind} (oracle threshold)")
    points = report["operating_points"]
    axes.scatter(
        [p["fpir"] for p in points],
        [p["dir"] for p in points],
        marker="x",
        color="black",
        zorder=3,
        label="calibrated threshold (target FPIR)",
    )
    axes.set_xscale("log")
    axes.set_xlabel("FPIR")
    axes.set_ylabel("DIR (rank 1, score ≥ threshold)")
    axes.set_ylim(0, 1.02)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def _plot_scores(report: dict[str, Any], path: Path) -> None:
    figure, axes = _figure()
    histogram = report["score_histogram"]
    edges = np.asarray(histogram["edges"])
    for kind in ("mated", *NONMATED_KINDS):
        if kind in histogram:
            counts = np.asarray(histogram[kind], dtype=np.float64)
            density = counts / max(counts.sum(), 1) / np.diff(edges)
            axes.stairs(density, edges, label=f"{kind} top-1", fill=kind == "mated", alpha=0.6)
    for point in report["operating_points"]:
        if point["threshold"] <= edges[-1]:
            axes.axvline(point["threshold"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("top-1 cosine score (dotted: calibrated thresholds)")
    axes.set_ylabel("density")
    axes.legend(fontsize="small")
    figure.savefig(path)


def _plot_oscr(report: dict[str, Any], path: Path) -> None:
    figure, axes = _figure()
    for kind, metrics in report["open_set"].items():
        curve = metrics["oscr_curve"]
        axes.plot(curve["fpr"], curve["ccr"], label=f"vs {kind} (area {metrics['oscr_area']:.3f})")
    axes.set_xscale("symlog", linthresh=1e-3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("FPR (share of non-mated accepted)")
    axes.set_ylabel("CCR (correct and accepted)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.savefig(path)


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _markdown(report: dict[str, Any], paths: dict[str, Path]) -> str:
    counts = report["counts"]
    lines = [
        "# Open-set evaluation",
        "",
        f"Gallery: {counts['gallery_subjects']} subjects, {counts['gallery_samples']} samples "
        f"(scoring: {report['settings']['scoring']}). Probes: {counts['mated']} mated, "
        f"{counts['unknown']} unknown, {counts['negative']} negative. "
        f"Calibration set: {counts['calibration']} non-mated searches.",
        "",
        f"Closed-set (rank-1) accuracy of mated probes: **{_fmt(report['closed_set_accuracy'])}**",
        "",
        "## Open-set metrics (mated probes vs each non-mated kind)",
        "",
        f"| non-mated | AUROC | FPR @ {report['settings']['tpr']:.0%} TPR | OSCR area |",
        "|---|---|---|---|",
    ]
    for kind, m in report["open_set"].items():
        lines.append(
            f"| {kind} | {_fmt(m['auroc'])} | {_fmt(m['fpr_at_tpr'])} | {_fmt(m['oscr_area'])} |"
        )
    kinds = list(report["open_set"])
    lines += [
        "",
        "## Calibrated thresholds (the deployed operating points)",
        "",
        "Thresholds calibrated on the calibration set; realised FPIR measured on the held-out "
        "non-mated probes. Rows marked * have fewer than 10/FPIR calibration searches.",
        "",
        "| target FPIR | threshold | DIR | "
        + " | ".join(f"realised FPIR ({k})" for k in kinds)
        + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for p in report["operating_points"]:
        mark = "" if p["supported"] else " *"
        realised = " | ".join(_fmt(p["realised_fpir"][k]) for k in kinds)
        lines.append(
            f"| {p['fpir']:g}{mark} | {_fmt(p['threshold'])} | {_fmt(p['dir'])} | {realised} |"
        )
    lines += [
        "",
        "## DIR at FPIR (oracle: threshold from the test non-mated scores themselves)",
        "",
        "| target FPIR | " + " | ".join(f"DIR vs {k}" for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for i, p in enumerate(report["operating_points"]):
        cells = []
        for k in kinds:
            row = report["open_set"][k]["dir"][i]
            cells.append(_fmt(row["dir"]) + ("" if row["supported"] else " *"))
        lines.append(f"| {p['fpir']:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![DIR vs FPIR]({paths['dir_fpir'].name})",
        "",
        f"![Score histograms]({paths['scores'].name})",
        "",
        f"![OSCR]({paths['oscr'].name})",
        "",
    ]
    return "\n".join(lines)

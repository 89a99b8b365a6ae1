"""``opengallery compare``: every loss, same network and budget, several seeds -> docs/results.md.

Each (loss, seed) run trains with the base configuration (``configs/compare.yaml``) and only
``loss`` and ``seed`` changed, is evaluated in the closed-world gallery setting with the
PyTorch network in the closed-world and the open-world gallery setting
(:mod:`training.galleries`), and leaves ``result.json`` in its run directory: an interrupted
comparison continues where it stopped. One table per setting gives mean ± std over seeds; the
plots overlay the mean DIR-vs-FPIR curves (against the held-out unknowns) of all losses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import LOSSES, TrainConfig, load_config

TARGET_FPIRS = (1e-2, 1e-1)
CURVE_GRID = np.logspace(-3, 0, 61)


EVALUATION = "closed and open world; calibration: validation unknowns"
SETTINGS = ("closed_world", "open_world")


def _row(report: dict[str, Any]) -> dict[str, float]:
    """The figures of one run in one gallery setting that go into a table."""
    unknown = report["open_set"]["unknown"]
    row = {
        "accuracy": report["closed_set_accuracy"],
        "auroc": unknown["auroc"],
        "oscr": unknown["oscr_area"],
    }
    for target in TARGET_FPIRS:
        oracle = next(r for r in unknown["dir"] if np.isclose(r["fpir"], target))
        point = next(p for p in report["operating_points"] if np.isclose(p["fpir"], target))
        row[f"dir@{target:g}"] = oracle["dir"]
        row[f"realised@{target:g}"] = point["realised_fpir"]["unknown"]
    return row


def _curve_on_grid(report: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    """DIR at each FPIR of ``grid`` from a step curve (best DIR with FPIR <= grid point)."""
    curve = report["open_set"]["unknown"]["dir_fpir_curve"]
    fpir = np.asarray(curve["fpir"])
    dir_ = np.asarray(curve["dir"])
    out = np.zeros_like(grid)
    for i, g in enumerate(grid):
        ok = fpir <= g + 1e-12
        out[i] = dir_[ok].max() if ok.any() else 0.0
    return out


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "closed_set_accuracy": report["closed_set_accuracy"],
        "open_set": {
            kind: {k: v for k, v in m.items() if k != "oscr_curve"}
            for kind, m in report["open_set"].items()
        },
        "operating_points": report["operating_points"],
        "counts": report["counts"],
    }


def run_one(base: TrainConfig, loss: str, seed: int, out: Path, data: Any) -> dict[str, Any]:
    """Train (or continue) one run and evaluate it; cached in ``out/result.json``.

    A cached result made with another evaluation (:data:`EVALUATION`) is re-evaluated from the
    run's checkpoint (keeping its training time) instead of retrained.
    """
    from training.galleries import TorchEmbedder, evaluate_both
    from training.trainer import train

    result_path = out / "result.json"
    cached = json.loads(result_path.read_text("utf-8")) if result_path.is_file() else None
    if cached is not None and cached.get("evaluation") == EVALUATION:
        return cached
    config = base.replace(loss=loss, seed=seed)
    started = time.perf_counter()
    run = train(config, out, resume=(out / "checkpoint.pt").is_file(), progress=False, data=data)
    seconds = time.perf_counter() - started
    if cached is not None:
        seconds = cached["train_seconds"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = evaluate_both(data, TorchEmbedder(run.network))
    result = {
        "loss": loss,
        "seed": seed,
        "train_seconds": seconds,
        "evaluation": EVALUATION,
        "settings": {setting: _compact(report) for setting, report in reports.items()},
    }
    result_path.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return result


def _mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    return f"{array.mean():.3f} ± {array.std(ddof=1) if len(array) > 1 else 0.0:.3f}"


def _plot(results: dict[str, list[dict[str, Any]]], setting: str, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    counts = next(iter(results.values()))[0]["settings"][setting]["counts"]
    # below one false accept in n unknown probes the empirical FPIR is 0: not plottable
    smallest = 1.0 / counts["unknown"]
    grid = CURVE_GRID[np.greater_equal(CURVE_GRID, smallest)]
    for loss, runs in results.items():
        curves = np.stack([_curve_on_grid(r["settings"][setting], grid) for r in runs])
        axes.plot(grid, curves.mean(axis=0), label=loss, drawstyle="steps-post")
    axes.set_xscale("log")
    axes.set_xlabel(f"FPIR ({counts['unknown']} held-out unknown probes)")
    axes.set_ylabel("DIR (mean over seeds)")
    axes.set_title(setting.replace("_", " ") + " gallery")
    axes.set_ylim(0, 1.0)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=3, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def _table(results: dict[str, list[dict[str, Any]]], setting: str) -> tuple[str, str]:
    """The markdown table of one setting and the ranking by mean DIR @ FPIR 1e-2."""
    columns = ["accuracy", "auroc", "oscr"]
    for target in TARGET_FPIRS:
        columns += [f"dir@{target:g}", f"realised@{target:g}"]
    header = (
        "| loss | rank-1 | AUROC | OSCR area | DIR @ FPIR 1e-2 | realised FPIR (target 1e-2) "
        "| DIR @ FPIR 1e-1 | realised FPIR (target 1e-1) | train s/run |"
    )
    lines = [header, "|---" * 9 + "|"]
    rows = {
        loss: [_row(r["settings"][setting]) for r in runs]
        for loss, runs in results.items()
        if all(setting in r["settings"] for r in runs)
    }
    for loss, loss_rows in rows.items():
        cells = [_mean_std([r[c] for r in loss_rows]) for c in columns]
        seconds = np.mean([r["train_seconds"] for r in results[loss]])
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    ranking = sorted(rows, key=lambda loss: -np.mean([r["dir@0.01"] for r in rows[loss]]))
    return "\n".join(lines), " > ".join(ranking)


def _describe(data: Any, setting: str, counts: dict[str, Any]) -> str:
    protocol = data.protocol
    if setting == "closed_world":
        return (
            f"the gallery enrols the {len(protocol.known)} known (training) classes with their "
            f"{counts['gallery_samples']} training images; {counts['mated']} mated probes (test "
            f"knowns), {counts['unknown']} held-out unknown probes (test unknowns, never "
            f"trained on); calibration: {counts['calibration']} validation unknowns."
        )
    if protocol.open_world:
        return (
            f"the gallery enrols {counts['gallery_subjects']} gallery-only classes (never "
            f"trained on) with {counts['gallery_samples']} validation images; "
            f"{counts['mated']} mated probes (their test images), {counts['unknown']} held-out "
            f"strangers (test unknowns: neither trained on nor enrolled); calibration: "
            f"{counts['calibration']} validation unknowns."
        )
    return (
        f"the gallery enrols the {counts['gallery_subjects']} unknown classes (never trained "
        f"on) with {counts['gallery_samples']} validation images; {counts['mated']} mated probes "
        f"(their test images); the {counts['unknown']} non-mated probes are test images of the "
        f"known training classes, not enrolled here; calibration: {counts['calibration']} "
        "validation negatives and knowns."
    )


def write_results(
    results: dict[str, list[dict[str, Any]]],
    base: TrainConfig,
    seeds: Sequence[int],
    markdown: Path,
    plot: Path,
    command: str,
    data: Any,
) -> None:
    sections = []
    for setting in SETTINGS:
        if not all(setting in r["settings"] for runs in results.values() for r in runs):
            continue
        path = plot
        if setting == "open_world":
            path = plot.with_name(f"{plot.stem}_open{plot.suffix}")
        _plot(results, setting, path)
        table, ranking = _table(results, setting)
        counts = next(iter(results.values()))[0]["settings"][setting]["counts"]
        sections.append(
            SECTION_TEMPLATE.format(
                title=setting.replace("_", "-").capitalize(),
                description=_describe(data, setting, counts),
                table=table,
                plot=path.name,
                ranking=ranking,
            )
        )
    protocol = data.protocol
    roles = f"{len(protocol.known)} known, {len(protocol.negative)} negative, "
    roles += f"{len(protocol.unknown)} unknown"
    if protocol.open_world:
        roles += f", {len(protocol.gallery)} gallery-only"
    augment = "on" if base.augments() else "off"
    text = RESULTS_TEMPLATE.format(
        protocol=base.protocol,
        command=command,
        roles=roles,
        split=base.split,
        split_seed=base.split_seed,
        seeds=", ".join(str(s) for s in seeds),
        network=base.network,
        width=base.width,
        embedding_dim=base.embedding_dim,
        epochs=base.epochs,
        batch_size=base.batch_size,
        optimizer=base.optimizer,
        lr=base.lr,
        schedule=base.schedule,
        augment=augment,
        sections="\n".join(sections),
    )
    # The hand-written discussion below the marker survives regeneration.
    discussion = DISCUSSION_MARKER + "\n\n(discussion to be written)\n"
    if markdown.is_file():
        previous = markdown.read_text(encoding="utf-8")
        if DISCUSSION_MARKER in previous:
            discussion = previous[previous.index(DISCUSSION_MARKER) :]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text + "\n" + discussion, encoding="utf-8")


DISCUSSION_MARKER = "<!-- discussion: kept when the table is regenerated -->"
RESULTS_TEMPLATE = """# Comparison of losses on {protocol}

The tables and plots are generated by `{command}` (training/compare.py); the discussion after
them is written by hand and kept when they are regenerated.

Setup: protocol `{protocol}` ({roles} classes; split {split}, split seed {split_seed}),
network `{network}` (width {width}, embedding {embedding_dim}), {epochs} epochs, batch
{batch_size}, {optimizer} lr {lr}, {schedule} schedule, augmentation {augment}; seeds {seeds};
losses with their default parameters (ArcFace/CosFace: scale "auto", AdaCos' fixed scale).
Scoring: cosine, the best sample of each subject ("max", the service's default).
DIR @ FPIR is the oracle value (threshold from the test unknowns themselves); the realised
FPIR is what the threshold calibrated on the calibration searches gives on the test unknowns.
Mean ± std over seeds; the training time is wall-clock seconds on a shared, busy 2-core
machine (one torch thread), for orientation only.
{sections}"""
SECTION_TEMPLATE = """
## {title} gallery

Evaluation: {description}

{table}

![DIR vs FPIR of every loss, {title} gallery]({plot})

Ranking by mean DIR @ FPIR 1e-2: {ranking}.
"""


def run_group(base: TrainConfig) -> str:
    """The cache directory name of a base configuration: readable, plus a digest of every
    field except the loss and seed, so that a changed recipe never reuses older runs."""
    fields = {k: v for k, v in base.to_dict().items() if k not in ("loss", "seed", "device")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    name = Path(base.protocol).name or "data"
    return f"{name}-{base.network}-w{base.width}-e{base.epochs}-{digest}"


def compare_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="opengallery compare",
        description="Train every loss on a protocol (configs/compare.yaml: mnist5k) with the "
        "same network and budget over several seeds; write docs/results.md and the DIR-FPIR "
        "plots of the closed- and open-world gallery.",
    )
    p.add_argument("--config", default="configs/compare.yaml", help="base configuration")
    p.add_argument("--losses", default=",".join(LOSSES), help="comma-separated loss names")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, help="override the base configuration's epochs")
    p.add_argument("--runs", default="runs/compare", help="directory of the individual runs")
    p.add_argument("--results", default="docs/results.md", help="markdown file to write")
    p.add_argument("--plot", default="docs/results_dir_fpir.png", help="PNG file to write")
    args = p.parse_args(list(argv))

    from tqdm import tqdm

    from training.data import load_from_config

    config_path = Path(args.config)
    base = load_config(config_path if config_path.is_file() else None, {"epochs": args.epochs})
    losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    unknown = sorted(set(losses) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; choose from {', '.join(LOSSES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_from_config(base)
    runs_dir = Path(args.runs) / run_group(base)
    results: dict[str, list[dict[str, Any]]] = {}
    jobs = [(loss, seed) for loss in losses for seed in seeds]
    with tqdm(jobs, desc="compare", file=sys.stderr, dynamic_ncols=True) as bar:
        for loss, seed in bar:
            bar.set_postfix(loss=loss, seed=seed)
            result = run_one(base, loss, seed, runs_dir / f"{loss}-seed{seed}", data)
            results.setdefault(loss, []).append(result)
    command = "opengallery compare " + " ".join(argv) if argv else "opengallery compare"
    write_results(results, base, seeds, Path(args.results), Path(args.plot), command.strip(), data)
    print(f"wrote {args.results} and {args.plot}")
    return 0

"""``opengallery train | evaluate | export | compare``: argument parsing and clear errors.

Each ``*_main(argv)`` returns an exit code: 0 on success, 2 for bad input (unknown loss,
missing folder, corrupt image, bad bundle, ...) with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from training.config import LOSSES, NETWORKS, OPTIMIZERS, SCHEDULES, ConfigError, load_config

BAD_INPUT = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from models.bundle import BundleError
    from models.calibration import CalibrationError
    from training.data import DataError
    from training.export import ExportError
    from training.trainer import TrainingError

    return (
        ConfigError,
        DataError,
        TrainingError,
        ExportError,
        BundleError,
        CalibrationError,
        ValueError,
    )


def _run(command: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except _user_errors() as error:
        print(f"opengallery {command}: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except FileNotFoundError as error:
        print(f"opengallery {command}: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"opengallery {command}: interrupted", file=sys.stderr)
        return 130


def _warn_small_calibration(
    command: str, searches: int, fpirs: Sequence[float], where: str = ""
) -> None:
    """One line on stderr when the calibration set is too small for some target FPIR."""
    from training.calibration import calibration_shortfall

    shortfall = calibration_shortfall(searches, fpirs)
    if shortfall is not None:
        print(f"opengallery {command}: warning: {where}{shortfall}", file=sys.stderr)


def _parse_set(values: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="opengallery train",
        description="Train an embedding network on a protocol. Options override --config.",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoint, config, history)")
    p.add_argument("--config", help="YAML file with configuration fields (see docs/training.md)")
    p.add_argument("--protocol", help="mnist5k, digits, or an image-folder root")
    p.add_argument("--loss", help=f"one of: {', '.join(LOSSES)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", help=f"one of: {', '.join(OPTIMIZERS)}")
    p.add_argument("--schedule", help=f"one of: {', '.join(SCHEDULES)}")
    p.add_argument("--network", help=f"one of: {', '.join(NETWORKS)}")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--balanced", action="store_true", default=None, help="class-balanced batches")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any configuration field, value in YAML syntax (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def train_main(argv: Sequence[str]) -> int:
    args = _train_parser().parse_args(list(argv))

    def body() -> int:
        from training.galleries import CALIBRATION_SET, FPIRS, calibration_split
        from training.trainer import load_checkpoint, train

        overrides = {
            name: getattr(args, name)
            for name in (
                "protocol",
                "loss",
                "epochs",
                "batch_size",
                "lr",
                "optimizer",
                "schedule",
                "network",
                "embedding_dim",
                "width",
                "seed",
                "balanced",
                "device",
                "max_steps",
            )
        }
        overrides.update(_parse_set(args.set))
        if args.resume:
            saved = load_checkpoint(args.out)["config"]
            config = load_config(None, {**saved, "epochs": args.epochs})
        else:
            config = load_config(args.config, overrides)
        run = train(config, args.out, resume=args.resume, progress=not args.no_progress)
        last = run.history[-1] if run.history else {}
        if os.environ.get("RANK", "0") != "0":
            return 0  # under torchrun only rank 0 reports
        print(
            f"trained {config.loss} on {config.protocol} for {config.epochs} epochs -> "
            f"{Path(args.out)} (val accuracy {last.get('val_accuracy', float('nan')):.3f})"
        )
        searches = len(calibration_split(run.data))
        _warn_small_calibration(
            "train", searches, FPIRS, f"export calibrates on the {CALIBRATION_SET}: "
        )
        return 0

    return _run("train", body)


def evaluate_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="opengallery evaluate",
        description="Gallery-based open-set evaluation of a training run (PyTorch) or a model "
        "bundle (onnxruntime) on its protocol: closed-world and open-world gallery.",
    )
    p.add_argument("target", help="training run directory or model bundle directory")
    p.add_argument(
        "--out",
        help="report directory (default: TARGET/eval for a run, ./eval-<model id> for a bundle)",
    )
    p.add_argument("--data", help="image-folder root (for a bundle trained on folder data)")
    args = p.parse_args(list(argv))

    def body() -> int:
        from training.calibration import SmallCalibrationWarning
        from training.galleries import evaluate_both, side_by_side

        target = Path(args.target)
        if not target.is_dir():
            raise FileNotFoundError(f"{target}: no such run or bundle directory")
        if (target / "manifest.json").exists():
            from models.bundle import load_bundle
            from training.data import BUILTIN, DataError, load_protocol
            from training.galleries import OnnxEmbedder

            bundle = load_bundle(target)
            protocol = bundle.manifest.protocol
            builtin = args.data is None
            if builtin and protocol["name"] not in BUILTIN:
                raise DataError(
                    f"{target} was trained on image-folder data ({protocol['name']!r}): "
                    "pass the folder with --data ROOT"
                )
            data = load_protocol(
                protocol["name"] if builtin else args.data,
                known=protocol["known"] if builtin else None,
                negative=protocol["negative"] if builtin else None,
                unknown=protocol["unknown"] if builtin else None,
                gallery=protocol.get("gallery") if builtin else None,
                split=protocol.get("split", (0.6, 0.2, 0.2)),
                split_seed=protocol.get("split_seed", 0),
                image_size=bundle.manifest.input.height,
                color=bundle.manifest.input.color,
            )
            embedder = OnnxEmbedder(bundle.onnx_path, bundle.manifest.output)
            out = Path(args.out or f"eval-{bundle.manifest.model_id}")
        else:
            from training.galleries import TorchEmbedder
            from training.trainer import load_run

            run = load_run(target)
            data = run.data
            embedder = TorchEmbedder(run.network)
            out = Path(args.out or target / "eval")
        with warnings.catch_warnings():
            # said once per gallery setting below, in one line each
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            reports = evaluate_both(data, embedder, out)
        for setting, report in reports.items():
            figures = "  ".join(
                f"AUROC vs {kind} {m['auroc']:.4f}" for kind, m in report["open_set"].items()
            )
            print(f"{setting}: accuracy {report['closed_set_accuracy']:.4f}  {figures}")
            fpirs = [row["fpir"] for row in report["calibration"]]
            searches = report["counts"]["calibration"]
            _warn_small_calibration("evaluate", searches, fpirs, f"{setting}: ")
        print(side_by_side(reports))
        print(f"wrote {out / 'report.md'}")
        return 0

    return _run("evaluate", body)


def export_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="opengallery export", description="Export a training run to an ONNX model bundle."
    )
    p.add_argument("run", help="training run directory")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", default=None, help="model name (default: the run's loss)")
    p.add_argument("--version", default="1", help="model version (default 1)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |onnxruntime - torch| of the L2-normalised embeddings of the "
        "parity batch (default 1e-4)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    args = p.parse_args(list(argv))

    def body() -> int:
        from models.bundle import BundleExistsError
        from training.export import ExportError, ParityError, export_run

        try:
            bundle = export_run(
                args.run,
                args.out,
                name=args.name,
                version=args.version,
                tolerance=args.tolerance,
                overwrite=args.overwrite,
            )
        except BundleExistsError:
            raise ExportError(
                f"{args.out}: already exists and is not empty; pass --overwrite to replace it"
            ) from None
        except ParityError as error:
            raise ExportError(
                f"{error}: nothing written; if that difference is acceptable, pass a larger "
                "--tolerance"
            ) from None
        m = bundle.manifest
        print(f"wrote {bundle.path} ({m.model_id}, parity max |diff| {m.parity_max_abs_diff:.2e})")
        fpirs = [row["fpir"] for row in m.calibration]
        _warn_small_calibration("export", m.extra["calibration_searches"], fpirs)
        return 0

    return _run("export", body)


def compare_main(argv: Sequence[str]) -> int:
    from training.compare import compare_command

    return _run("compare", lambda: compare_command(argv))

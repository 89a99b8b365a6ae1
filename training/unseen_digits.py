"""A bundle on handwritten digits it never saw: UCI optdigits, enrolled as a deployment would.

    python -m training.unseen_digits models/default [--enrol 10] [--repeats 5]

The bundle trained on mnist5k; ``sklearn.datasets.load_digits()`` is another collection
(1,797 digits written by other people, scanned at 8x8 and upscaled to 28x28 by the
bundle's own preprocessing). Per repeat r: enrol ``--enrol`` random images of each known
digit of the bundle's protocol (seed r), probe with every other image of those digits
(mated) and with every image of the other digits (strangers, non-mated), and take the
thresholds from the bundle's own ``calibration.npz`` recalibrated against this gallery, as the
service does. Prints rank-1, the DIR at the calibrated thresholds with the FPIR they realise
on the strangers, and the oracle DIR (threshold from the strangers themselves); mean over
repeats.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

FPIRS = (1e-2, 1e-1)


def evaluate_unseen(bundle_dir: str, enrol: int = 10, repeats: int = 5) -> dict[str, Any]:
    from models.bundle import load_bundle
    from training.calibration import SmallCalibrationWarning
    from training.data import _digits
    from training.evaluate import evaluate_gallery
    from training.galleries import OnnxEmbedder

    bundle = load_bundle(bundle_dir)
    known = [int(c) for c in bundle.manifest.protocol["known"]]
    pixels, digits = _digits()
    embedder = OnnxEmbedder(bundle.onnx_path, bundle.manifest.output)
    from models.preprocessing import pixels_to_array

    embeddings = np.concatenate(
        [
            embedder.run(pixels_to_array(pixels[i : i + 256], bundle.manifest.input))
            for i in range(0, len(pixels), 256)
        ]
    )
    calibration = bundle.load_calibration()
    rows = []
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        enrolled = np.concatenate(
            [rng.choice(np.flatnonzero(digits == d), enrol, replace=False) for d in known]
        )
        probes = np.setdiff1d(np.arange(len(digits)), enrolled)
        kinds = np.where(np.isin(digits[probes], known), "mated", "unknown")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            report = evaluate_gallery(
                embeddings[enrolled],
                digits[enrolled],
                embeddings[probes],
                digits[probes],
                kinds,
                calibration,
                (1e-3, *FPIRS, 1.0),
            )
        row: dict[str, float] = {"rank1": report["closed_set_accuracy"]}
        for fpir in FPIRS:
            point = next(p for p in report["operating_points"] if np.isclose(p["fpir"], fpir))
            oracle = next(r for r in report["open_set"]["unknown"]["dir"] if r["fpir"] == fpir)
            row[f"dir@{fpir:g}"] = point["dir"]
            row[f"realised@{fpir:g}"] = point["realised_fpir"]["unknown"]
            row[f"oracle@{fpir:g}"] = oracle["dir"]
        rows.append(row)
    counts = report["counts"]
    return {
        "model": bundle.manifest.model_id,
        "enrolled_per_subject": enrol,
        "repeats": repeats,
        "mated": counts["mated"],
        "strangers": counts["unknown"],
        "calibration": len(calibration),
        "mean": {key: float(np.mean([r[key] for r in rows])) for key in rows[0]},
        "std": {key: float(np.std([r[key] for r in rows])) for key in rows[0]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="model bundle directory (trained on digits)")
    p.add_argument("--enrol", type=int, default=10, help="images enrolled per known digit")
    p.add_argument("--repeats", type=int, default=5, help="enrolment draws (seeds 0..R-1)")
    args = p.parse_args(argv)
    result = evaluate_unseen(args.bundle, args.enrol, args.repeats)
    mean, std = result["mean"], result["std"]
    print(
        f"{result['model']} on UCI digits: {args.enrol} enrolled per known digit, "
        f"{result['mated']} mated probes, {result['strangers']} strangers, "
        f"{result['calibration']} calibration searches (bundle), mean ± std over "
        f"{args.repeats} draws"
    )
    print(f"rank-1 {mean['rank1']:.3f} ± {std['rank1']:.3f}")
    for fpir in FPIRS:
        key = f"{fpir:g}"
        print(
            f"FPIR {key}: DIR {mean['dir@' + key]:.3f} ± {std['dir@' + key]:.3f} "
            f"(realised FPIR {mean['realised@' + key]:.3f}); oracle DIR "
            f"{mean['oracle@' + key]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

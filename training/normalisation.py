"""Score normalisation with the calibration set as the cohort (T-norm), and its evaluation.

A raw top-1 score mixes two things: how close the probe is to its best subject, and how close
the probe is to *everything* (a probe near the centre of the embedding cloud scores high
against any gallery). T-norm (Auckenthaler et al., 2000) removes the second: each score of a
probe is rescaled by the mean and spread of that probe's scores against a cohort of
non-mated embeddings, here the calibration set itself::

    s' = (s - mean_c(p)) / std_c(p)        c: the probe's scores against the cohort

(optionally over the probe's `top` highest cohort scores only, the "adaptive" variant). The
normalisation is monotone per probe, so it never changes which subject is best, only whether
that subject is accepted. The threshold for an FPIR is calibrated on the normalised top-1
scores of the calibration probes, each normalised against the cohort without itself.

The question it answers: does the realised FPIR hold better on strangers *unlike* the
calibration set? :func:`compare` reports, per method, the calibrated threshold, the FPIR it
realises on each set of strangers and the detection rate (DIR) on mated probes;
`python -m training.normalisation BUNDLE` runs it on a bundle's protocol (closed world) and,
for a digits bundle, on the other digits dataset as strangers from another domain.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.calibration import min_searches_for_fpir, realised_fpir, threshold_for_fpir
from models.scoring import DEFAULT_SCORING, Scoring, SubjectScorer, l2_normalise

METHODS = ("raw", "tnorm", "tnorm-top50")


def cohort_statistics(
    probes: np.ndarray, cohort: np.ndarray, *, top: int | None = None, leave_out_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per probe, the mean and standard deviation of its cosine scores against the cohort
    (over its `top` highest scores when given). `leave_out_self`: `probes` are the cohort
    itself, and each probe's score against itself is left out."""
    unit_probes = l2_normalise(probes, "probes", allow_zero=True).astype(np.float64)
    unit_cohort = l2_normalise(cohort, "cohort").astype(np.float64)
    scores = unit_probes @ unit_cohort.T
    if leave_out_self:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError("leave_out_self needs the probes to be the cohort")
        np.fill_diagonal(scores, -np.inf)
        scores = np.sort(scores, axis=1)[:, 1:]  # the -inf (itself) sorts first
    if top is not None:
        scores = np.sort(scores, axis=1)[:, -top:]
    mean = scores.mean(axis=1)
    std = np.maximum(scores.std(axis=1), 1e-6)
    return mean, std


def normalised_top1(
    scorer: SubjectScorer,
    probes: np.ndarray,
    cohort: np.ndarray,
    method: str,
    *,
    leave_out_self: bool = False,
) -> np.ndarray:
    """Top-1 scores of `probes` against the gallery, normalised by `method` (float64)."""
    _, raw = scorer.top1(probes)
    raw = raw.astype(np.float64)
    if method == "raw":
        return raw
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    top = 50 if method == "tnorm-top50" else None
    mean, std = cohort_statistics(probes, cohort, top=top, leave_out_self=leave_out_self)
    return (raw - mean) / std


def compare(
    gallery_embeddings: np.ndarray,
    gallery_subjects: np.ndarray,
    mated_embeddings: np.ndarray,
    mated_subjects: np.ndarray,
    strangers: Mapping[str, np.ndarray],
    calibration_embeddings: np.ndarray,
    fpirs: Sequence[float],
    *,
    methods: Sequence[str] = METHODS,
    scoring: Scoring = DEFAULT_SCORING,
) -> list[dict[str, Any]]:
    """One row per (method, FPIR) the calibration set supports: the threshold calibrated on
    the calibration set, the FPIR it realises on each set of `strangers` (non-mated probes),
    and DIR (mated probes identified correctly and accepted)."""
    scorer = SubjectScorer(gallery_embeddings, gallery_subjects, scoring=scoring)
    labels, _ = scorer.top1(mated_embeddings)
    correct = labels == np.asarray(mated_subjects)
    rows = []
    for method in methods:
        calibration = normalised_top1(
            scorer, calibration_embeddings, calibration_embeddings, method, leave_out_self=True
        )
        mated = normalised_top1(scorer, mated_embeddings, calibration_embeddings, method)
        others = {
            name: normalised_top1(scorer, embeddings, calibration_embeddings, method)
            for name, embeddings in strangers.items()
        }
        for fpir in fpirs:
            if len(calibration) < min_searches_for_fpir(fpir):
                continue
            threshold = threshold_for_fpir(calibration, fpir)
            rows.append(
                {
                    "method": method,
                    "fpir": fpir,
                    "threshold": threshold,
                    "dir": float(np.mean(correct & (mated >= threshold))),
                    "realised_fpir": {
                        name: realised_fpir(scores, threshold) for name, scores in others.items()
                    },
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    names = list(rows[0]["realised_fpir"]) if rows else []
    lines = [
        "| method | target FPIR | DIR | " + " | ".join(f"FPIR on {n}" for n in names) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for row in rows:
        cells = [f"{row['realised_fpir'][n]:.4f}" for n in names]
        lines.append(
            f"| {row['method']} | {row['fpir']:g} | {row['dir']:.4f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from models.bundle import load_bundle
    from training.data import KNOWN, NEGATIVE, UNKNOWN, load_protocol
    from training.galleries import OnnxEmbedder, calibration_split

    parser = argparse.ArgumentParser(
        prog="python -m training.normalisation",
        description="Raw scores vs T-norm (the calibration set as cohort): realised FPIR on "
        "strangers like and unlike the calibration set, and DIR, for a bundle.",
    )
    parser.add_argument("bundle", help="a bundle trained on a built-in protocol")
    parser.add_argument("--fpirs", default="0.02,0.05,0.1")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle)
    protocol = bundle.manifest.protocol
    embedder = OnnxEmbedder(bundle.onnx_path, bundle.manifest.output)

    def data_of(name: str) -> Any:
        return load_protocol(
            name,
            known=protocol["known"],
            negative=protocol["negative"],
            unknown=protocol["unknown"],
            split=protocol.get("split", (0.6, 0.2, 0.2)),
            split_seed=protocol.get("split_seed", 0),
        )

    data = data_of(protocol["name"])
    gallery = data.train.with_roles(KNOWN)
    mated = data.test.with_roles(KNOWN)
    strangers = {
        "test unknowns (like the set)": embedder(data.test.with_roles(UNKNOWN)),
        "test negatives (other classes)": embedder(data.test.with_roles(NEGATIVE)),
    }
    other = {"mnist5k": "digits", "digits": "mnist5k"}.get(protocol["name"])
    if other is not None:  # the same classes from another dataset: another domain
        foreign = data_of(other)
        strangers[f"{other} negatives+unknowns (another domain)"] = np.concatenate(
            [
                embedder(split.with_roles(NEGATIVE, UNKNOWN))
                for split in (foreign.train, foreign.val, foreign.test)
            ]
        )
    rows = compare(
        embedder(gallery),
        np.array([str(c) for c in gallery.class_names()]),
        embedder(mated),
        np.array([str(c) for c in mated.class_names()]),
        strangers,
        embedder(calibration_split(data)),
        [float(f) for f in args.fpirs.split(",")],
    )
    print(f"Bundle {bundle.model_id}, protocol {protocol['name']}, closed world; calibration set:")
    print(f"the validation unknowns ({len(calibration_split(data))} searches).\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The FPIR -> threshold table of a bundle's manifest, from gallery searches.

Galleries are scored by :class:`models.scoring.SubjectScorer`, the rule the service shares.

The calibration table comes from M non-mated searches: the top-1 scores of calibration
embeddings (validation negatives / unknowns, none of them enrolled) against the gallery, one
row per target FPIR with the threshold of :func:`models.calibration.threshold_for_fpir`:

    {"fpir": α, "threshold": θ, "supported": M >= ⌈10/α⌉, "searches": M}

Rows with too few searches are *kept and marked* ``"supported": false`` (and a
:class:`SmallCalibrationWarning` is issued) rather than dropped: the threshold is still the
rule's answer on the data there is, but fewer than 10 non-mated searches lie above it, so the
FPIR it realises on new data is noisy. The manifest loader accepts these rows as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.calibration import min_searches_for_fpir, threshold_for_fpir
from models.scoring import SubjectScorer

DEFAULT_FPIRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


class SmallCalibrationWarning(UserWarning):
    """A target FPIR needs more non-mated searches than the calibration set has."""


def calibration_table(
    nonmated_top1_scores: Any, fpirs: Sequence[float] = DEFAULT_FPIRS
) -> list[dict[str, Any]]:
    """One manifest calibration row per target FPIR (ascending), from non-mated top-1 scores.

    Warns (:class:`SmallCalibrationWarning`) once, naming every unsupported FPIR.
    """
    scores = np.asarray(nonmated_top1_scores)
    targets = sorted({float(f) for f in fpirs})
    if not targets:
        raise ValueError("no target FPIR given")
    searches = int(scores.size)
    rows = []
    for fpir in targets:
        rows.append(
            {
                "fpir": fpir,
                "threshold": threshold_for_fpir(scores, fpir),
                "supported": searches >= min_searches_for_fpir(fpir),
                "searches": searches,
            }
        )
    shortfall = calibration_shortfall(searches, targets)
    if shortfall is not None:
        warnings.warn(shortfall, SmallCalibrationWarning, stacklevel=2)
    return rows


def calibration_shortfall(searches: int, fpirs: Sequence[float] = DEFAULT_FPIRS) -> str | None:
    """One line naming each target FPIR that ``searches`` non-mated searches cannot support,
    with the number it needs (10/FPIR), or None when all are supported."""
    short = sorted(
        (float(f) for f in set(fpirs) if searches < min_searches_for_fpir(f)), reverse=True
    )
    if not short:
        return None
    needs = ", ".join(f"FPIR {f:g} (needs 10/{f:g} = {min_searches_for_fpir(f)})" for f in short)
    return (
        f"the calibration set has {searches} non-mated searches, too few for {needs}: those "
        'thresholds are kept but marked "supported": false, and the FPIR they realise is noisy'
    )


def calibrate_gallery(
    calibration_embeddings: Any,
    gallery: SubjectScorer,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
) -> list[dict[str, Any]]:
    """The calibration table of ``gallery`` from non-mated embeddings (none enrolled)."""
    _, scores = gallery.top1(calibration_embeddings)
    return calibration_table(scores, fpirs)

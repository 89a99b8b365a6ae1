"""Forward+backward time of every loss in training.losses, side by side with the references.

    .venv/bin/python bench/losses.py [--threads T] [--repeats R] [--clock wall|cpu] [--skip-margin]

Classification losses run at N=8192, C=1000 (features D=512 for ObjectoSphere); the margin
heads at N=512, C=100000, D=512. References, when importable (they are NOT dependencies of
the project; install them by hand into the venv for a comparison): ``openloss`` 0.0.2 for
EOS, MEL and ObjectoSphere, ``pytorch-metric-learning`` for ArcFace and CosFace;
``F.cross_entropy`` on an all-known batch is shown as a floor for EOS/MEL.

One timed step = forward + backward with the gradients set to None before (as
``optimizer.zero_grad()`` does). Ours and the reference alternate step by step so that the
load of a shared machine hits both alike; after the warm-up the median is reported. The
result is a markdown table on stdout; ratio = reference time / our time (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.losses import (
    ArcFaceLoss,
    CACLoss,
    CosFaceLoss,
    EntropicObjectoSphereLoss,
    EntropicOpenSetLoss,
    MaximalEntropyLoss,
    ObjectoSphereLoss,
    SimLoss,
    ordinal_similarity,
)

Step = Callable[[], None]


@dataclass
class Row:
    name: str
    shape: str
    ours: Step
    reference_name: str = "—"
    reference: Step | None = None


def make_step(loss: Callable[..., torch.Tensor], inputs: tuple, leaves: list) -> Step:
    """One training step of a loss: zero the grads, forward, backward."""

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        loss(*inputs).backward()

    return step


def try_import(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


def classification_rows(n: int, c: int, d: int, negative_share: float) -> list[Row]:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c, generator=generator) * 3).requires_grad_()
    features = (torch.randn(n, d, generator=generator) * 4).requires_grad_()
    targets = torch.randint(0, c, (n,), generator=generator)
    negative = torch.rand(n, generator=generator) < negative_share
    mixed = torch.where(negative, -1, targets)
    shape = f"N={n}, C={c}"
    openloss = try_import("openloss")

    def ref(factory: Callable[[], object], inputs: tuple, leaves: list) -> Step | None:
        return None if openloss is None else make_step(factory(), inputs, leaves)

    rows = [
        Row(
            "EntropicOpenSetLoss",
            shape,
            make_step(EntropicOpenSetLoss(c), (logits, mixed), [logits]),
            "openloss.EntropicOpenSetLoss",
            ref(lambda: openloss.EntropicOpenSetLoss(c), (logits, mixed), [logits]),
        ),
        Row(
            "EntropicOpenSetLoss (all known)",
            shape,
            make_step(EntropicOpenSetLoss(c), (logits, targets), [logits]),
            "F.cross_entropy",
            make_step(F.cross_entropy, (logits, targets), [logits]),
        ),
        Row(
            "MaximalEntropyLoss",
            shape,
            make_step(MaximalEntropyLoss(c), (logits, mixed), [logits]),
            "openloss.MaximalEntropyLoss",
            ref(lambda: openloss.MaximalEntropyLoss(c), (logits, mixed), [logits]),
        ),
        Row(
            "ObjectoSphereLoss",
            f"N={n}, D={d}",
            make_step(ObjectoSphereLoss(), (features, mixed), [features]),
            "openloss.ObjectoSphereLoss",
            ref(lambda: openloss.ObjectoSphereLoss(), (features, mixed), [features]),
        ),
    ]
    if openloss is not None:
        eos, sphere = openloss.EntropicOpenSetLoss(c), openloss.ObjectoSphereLoss()

        def openloss_combined(z, f, y):
            return eos(z, y) + 0.01 * sphere(f, y)

        combined_reference = make_step(
            openloss_combined, (logits, features, mixed), [logits, features]
        )
    else:
        combined_reference = None
    rows.append(
        Row(
            "EntropicObjectoSphereLoss",
            f"{shape}, D={d}",
            make_step(EntropicObjectoSphereLoss(c), (logits, features, mixed), [logits, features]),
            "openloss EOS + λ·ObjectoSphere",
            combined_reference,
        )
    )
    rows.append(Row("CACLoss", shape, make_step(CACLoss(c), (logits, targets), [logits])))
    rows.append(
        Row(
            "SimLoss (ordinal r=0.5)",
            shape,
            make_step(SimLoss(ordinal_similarity(c, 0.5)), (logits, targets), [logits]),
        )
    )
    return rows


def margin_rows(n: int, c: int, d: int) -> list[Row]:
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(n, d, generator=generator).requires_grad_()
    targets = torch.randint(0, c, (n,), generator=generator)
    shape = f"N={n}, C={c}, D={d}"
    pml = try_import("pytorch_metric_learning.losses")
    rows = []
    for name, ours_cls, margin, pml_name, pml_margin in (
        ("ArcFaceLoss", ArcFaceLoss, 0.5, "ArcFaceLoss", math.degrees(0.5)),
        ("CosFaceLoss", CosFaceLoss, 0.35, "CosFaceLoss", 0.35),
    ):
        ours = ours_cls(c, d, margin=margin, scale=64.0)
        reference = None
        if pml is not None:
            theirs = getattr(pml, pml_name)(c, d, margin=pml_margin, scale=64)
            with torch.no_grad():
                theirs.W.copy_(ours.weight.T)  # same problem for both
            reference = make_step(theirs, (embeddings, targets), [embeddings, theirs.W])
        rows.append(
            Row(
                name,
                shape,
                make_step(ours, (embeddings, targets), [embeddings, ours.weight]),
                f"pytorch_metric_learning.{pml_name}",
                reference,
            )
        )
    return rows


def time_step(step: Step, clock: Callable[[], float]) -> float:
    start = clock()
    step()
    return clock() - start


def measure(
    row: Row, warmup: int, repeats: int, clock: Callable[[], float]
) -> tuple[float, float | None]:
    for _ in range(warmup):
        row.ours()
        if row.reference is not None:
            row.reference()
    ours, reference = [], []
    for _ in range(repeats):  # alternate: the same machine load for both
        ours.append(time_step(row.ours, clock))
        if row.reference is not None:
            reference.append(time_step(row.reference, clock))
    return statistics.median(ours), (statistics.median(reference) if reference else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=cores, help="torch threads (all cores)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps, N=8192 rows")
    parser.add_argument("--margin-repeats", type=int, default=5, help="timed steps, heads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--negative-share", type=float, default=0.1)
    parser.add_argument("--skip-margin", action="store_true", help="skip the C=100000 heads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: CPU time of this process (all threads), steadier on a "
        "shared machine (use with --threads 1)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)

    rows = [
        (row, args.repeats) for row in classification_rows(8192, 1000, 512, args.negative_share)
    ]
    if not args.skip_margin:
        rows += [(row, args.margin_repeats) for row in margin_rows(512, 100_000, 512)]

    versions = [f"torch {torch.__version__}"]
    for module in ("openloss", "pytorch_metric_learning"):
        imported = try_import(module)
        if imported is not None:
            version = getattr(imported, "__version__", None)
            if version is None:
                from importlib.metadata import version as dist_version

                version = dist_version(module.replace("_", "-"))
            versions.append(f"{module} {version}")
        else:
            versions.append(f"{module} not installed")
    print(
        f"CPU: {platform.processor() or platform.machine()}, {args.threads} torch threads; "
        f"{', '.join(versions)}; float32; {args.negative_share:.0%} negatives in mixed "
        f"batches; median of {args.repeats} (heads: {args.margin_repeats}) steps after "
        f"{args.warmup} warm-up; step = forward + backward; {args.clock} clock.\n"
    )
    print("| loss | shape | ours (ms) | reference | reference (ms) | ratio (ref/ours) |")
    print("|---|---|---:|---|---:|---:|")
    for row, repeats in rows:
        print(f"measuring {row.name} ...", file=sys.stderr, flush=True)
        ours, reference = measure(row, args.warmup, repeats, clock)
        if reference is None:
            ref_cells = f"{row.reference_name if row.reference_name != '—' else '—'} | — | —"
            if row.reference_name != "—":
                ref_cells = f"{row.reference_name} (not installed) | — | —"
        else:
            ref_cells = f"{row.reference_name} | {reference * 1e3:.1f} | {reference / ours:.2f}x"
        print(f"| {row.name} | {row.shape} | {ours * 1e3:.1f} | {ref_cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

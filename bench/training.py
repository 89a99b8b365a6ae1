"""Training throughput with and without augmentation, and the wall time of `make model`.

    .venv/bin/python bench/training.py [--config configs/default.yaml] [--steps 60]
                                       [--threads 1] [--make-model]

Throughput: the training steps of the configuration (its network, loss, batch size and torch
threads) on its protocol, timed after 5 warm-up steps, once with augmentation off and once on
(the configuration's parameters). Each step = input preparation (uint8 pixels -> augmented,
normalised float batch) + forward + backward + optimiser step, as in training/trainer.py;
the input preparation alone is timed too. Images/s = batch size x steps / seconds (median of
3 repeats, alternating off/on so that a shared machine's load hits both alike).

``--make-model`` also runs the two commands of `make model` (train + export) into a temporary
directory and reports their wall-clock time, with the sha256 of model.onnx and
calibration.npz (run it twice to check that they do not change).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import load_config  # noqa: E402
from training.data import KNOWN, load_from_config  # noqa: E402
from training.trainer import (  # noqa: E402
    EpochSampler,
    augmented_inputs,
    build_model,
    build_optimizer,
    seed_everything,
)


def _time_steps(config, data, augment: bool, steps: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Seconds of ``steps`` full training steps and of their input preparation alone."""
    seed_everything(config.seed, config.deterministic)
    module = build_model(config, data)
    optimizer, _ = build_optimizer(config, module)
    split = data.train if module.objective.uses_negatives else data.train.with_roles(KNOWN)
    targets = torch.from_numpy(split.targets)
    sampler = EpochSampler(split.targets, config.batch_size, config.seed)
    params = config.augment_parameters()
    batches = list(sampler.batches(0))
    module.train()

    def inputs(step: int) -> torch.Tensor:
        batch = batches[step % len(batches)]
        if not augment:
            return torch.from_numpy(split.inputs(batch))
        return augmented_inputs(split, batch, params, config.seed, 0, step, sampler)

    def step_once(step: int) -> None:
        batch = batches[step % len(batches)]
        loss, _ = module(inputs(step), targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for step in range(5):
        step_once(step)
    started = time.perf_counter()
    for step in range(steps):
        step_once(step)
    total = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(steps):
        inputs(step)
    return total, time.perf_counter() - started


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def make_model(config_path: str) -> None:
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-make-model-") as tmp:
        run, bundle = Path(tmp) / "run", Path(tmp) / "bundle"
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for command in (
            ["train", "--config", config_path, "--out", str(run), "--no-progress"],
            ["export", str(run), "--out", str(bundle), "--name", "bench", "--version", "1"],
        ):
            subprocess.run(
                [python, "-m", "opengallery.cli", *command],
                check=True,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        seconds = time.perf_counter() - started
        print(
            f"\nmake model ({config_path}: train + export): {seconds:.0f} s wall clock; "
            f"model.onnx sha256 {_sha256(bundle / 'model.onnx')}…, "
            f"calibration.npz sha256 {_sha256(bundle / 'calibration.npz')}…"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: the configuration's)")
    p.add_argument("--make-model", action="store_true", help="also time train + export")
    args = p.parse_args()

    config = load_config(ROOT / args.config)
    threads = args.threads or config.threads
    if threads:
        torch.set_num_threads(threads)
    data = load_from_config(config)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for augment in (False, True):
            results[augment].append(_time_steps(config, data, augment, args.steps))
    images = config.batch_size * args.steps
    print(
        f"{args.config}: {config.network} width {config.width}, loss {config.loss}, batch "
        f"{config.batch_size}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs; "
        f"median of {args.repeats} x {args.steps} steps\n"
    )
    print("| augmentation | training images/s | input preparation images/s |")
    print("|---|---|---|")
    for augment in (False, True):
        step = statistics.median(r[0] for r in results[augment])
        prep = statistics.median(r[1] for r in results[augment])
        label = "on" if augment else "off"
        print(f"| {label} | {images / step:,.0f} | {images / prep:,.0f} |")
    if args.make_model:
        make_model(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())

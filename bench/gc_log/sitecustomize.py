"""Logs every garbage collection of an `opengallery serve` process, for benchmarks.

Put this directory first on PYTHONPATH and name a file prefix in BENCH_GC_LOG (not an
OPENGALLERY_ variable: the benchmarks start servers without those of their own environment);
each server process then appends one line per collection to `<prefix>.<pid>`: the generation,
its duration in ms and the seconds since the process started. Other processes are untouched.

    env PYTHONPATH=bench/gc_log:. BENCH_GC_LOG=/tmp/gc \
        .venv/bin/python bench/scale_search.py --sizes 100000 --clients 8 ...
"""

from __future__ import annotations

import gc
import os
import sys
import time


def _log_collections(prefix: str) -> None:
    started = time.monotonic()
    out = open(f"{prefix}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - the process's life
    began: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            began[:] = [time.perf_counter()]
        elif began:
            milliseconds = 1000 * (time.perf_counter() - began[0])
            out.write(f"{info['generation']} {milliseconds:.3f} {time.monotonic() - started:.2f}\n")

    gc.callbacks.append(callback)


if os.environ.get("BENCH_GC_LOG") and "serve" in sys.argv:
    _log_collections(os.environ["BENCH_GC_LOG"])

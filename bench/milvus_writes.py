"""What a write costs in Milvus: 200 one-sample enrolments into a 10k collection, timed.

    PYTHONPATH=. .venv/bin/python bench/milvus_writes.py

The index calls of an enrolment as the service makes them (`writing()` around `add_samples`,
the collection's mutex on a SQLite database), "max" and "mean" galleries, on a `milvus-lite
server` on loopback; no HTTP, no database write. Run from a checkout without `writing()` (the
code before replicas shared collections) it times the same calls without the mutex and digest.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the checkout it runs in, to compare two

from service.index import IndexContents
from service.index.milvus import MilvusBackend
from service.storage import open_store
from service.testing_engines import MilvusServer

logging.disable(logging.WARNING)
SAMPLES, DIM, WRITES = 10_000, 128, 200


def main() -> int:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((SAMPLES + 2 * WRITES, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, SAMPLES + 1, dtype=np.int64)
    pks = (ids - 1) // 5 + 1
    contents = IndexContents(ids, pks, vectors[:SAMPLES], {int(p): f"s{p}" for p in set(pks)})
    with tempfile.TemporaryDirectory() as work, MilvusServer() as milvus:
        store = open_store(f"sqlite:///{Path(work) / 'bench.sqlite3'}")
        backend = MilvusBackend(milvus.url)
        if hasattr(backend, "coordinate"):
            backend.coordinate(store.exclusive)
        try:
            for offset, scoring in enumerate(("max", "mean")):
                index = backend.build(DIM, scoring, contents, gallery=scoring, model_id="m@1")
                writing = getattr(index, "writing", contextlib.nullcontext)
                times = []
                for i in range(WRITES):
                    row = SAMPLES + offset * WRITES + i
                    pk = i % 50 + 1
                    started = time.perf_counter()
                    with writing():
                        index.add_samples(pk, f"s{pk}", np.array([row + 1]), vectors[row : row + 1])
                    times.append(1000 * (time.perf_counter() - started))
                times.sort()
                p50, p99 = statistics.median(times), times[int(0.99 * len(times))]
                print(f"{scoring}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        finally:
            backend.close()
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

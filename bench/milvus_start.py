"""A replica's start on a shared Milvus collection: reusing it against rebuilding it.

    .venv/bin/python bench/milvus_start.py                  # 100k samples, 128-d, "max"
    .venv/bin/python bench/milvus_start.py --samples 20000 --scoring mean --out start.json

What a replica does for one gallery at start once it has read the gallery's embeddings from
the database (the same read either way, not timed here): `MilvusBackend.build` under the
collection's mutex in the database (SQLite's here). Timed, each on a `milvus-lite server` on
loopback:

- created: no collection yet (or one made for another dimension or index type): the
  collection made and every sample (and template) written;
- reused: the collection holds the database's samples: checked by id and subject, and the
  counts, without moving a vector;
- repaired, database ahead: `--changed` samples the collection lacks (writes that Milvus
  refused after the database committed them): looked up by id, counted, the missing written;
- repaired, collection ahead: `--changed` samples the database deleted and the collection
  still holds: counted, then the collection's ids scanned to find them, and deleted.

milvus-lite is Milvus's single-process development engine: the figures are a floor for the
protocol's cost, not a forecast for Milvus standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.index import IndexContents  # noqa: E402
from service.index.milvus import MilvusBackend  # noqa: E402
from service.storage import open_store  # noqa: E402
from service.testing_engines import MilvusServer  # noqa: E402


def contents_of(
    rng: np.random.Generator, samples: int, dim: int, per_subject: int, first_id: int = 1
) -> IndexContents:
    vectors = rng.standard_normal((samples, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample_ids = np.arange(first_id, first_id + samples, dtype=np.int64)
    subject_pks = (sample_ids - 1) // per_subject + 1
    subjects = {int(pk): f"subject-{pk}" for pk in np.unique(subject_pks)}
    return IndexContents(sample_ids, subject_pks, vectors, subjects)


def with_added(contents: IndexContents, rng: np.random.Generator, count: int) -> IndexContents:
    """`contents` and `count` new samples of its last subjects: a database ahead of the
    collection (writes committed that Milvus refused, or whose writer died before Milvus)."""
    dim = contents.vectors.shape[1]
    added = rng.standard_normal((count, dim)).astype(np.float32)
    added /= np.linalg.norm(added, axis=1, keepdims=True)
    new_ids = np.arange(1, count + 1, dtype=np.int64) + int(contents.sample_ids.max())
    return IndexContents(
        np.concatenate([contents.sample_ids, new_ids]),
        np.concatenate([contents.subject_pks, contents.subject_pks[-count:]]),
        np.concatenate([contents.vectors, added]),
        contents.subjects,
    )


def without_first(contents: IndexContents, count: int) -> IndexContents:
    """`contents` less its first `count` samples: a collection holding samples the database
    deleted (deletions Milvus refused)."""
    return IndexContents(
        contents.sample_ids[count:],
        contents.subject_pks[count:],
        contents.vectors[count:],
        contents.subjects,
    )


def timed_build(
    backend: MilvusBackend, dim: int, scoring: str, contents: IndexContents
) -> dict[str, float | int | str]:
    started = time.perf_counter()
    with backend.building("g", "bench@1"):
        index = backend.build(dim, scoring, contents, gallery="g", model_id="bench@1")
    seconds = time.perf_counter() - started
    return {"outcome": index.opened, "seconds": round(seconds, 2), "rows": index.rows_written}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-subject", type=int, default=5)
    parser.add_argument("--scoring", choices=("max", "mean"), default="max")
    parser.add_argument("--changed", type=int, default=1000, help="samples added and removed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    contents = contents_of(rng, args.samples, args.dim, args.per_subject)
    ahead = with_added(contents, rng, args.changed)
    results: dict[str, dict | int | str] = {
        "samples": args.samples,
        "dim": args.dim,
        "scoring": args.scoring,
        "changed": args.changed,
    }
    steps = (
        ("created", contents),
        ("reused", contents),
        ("repaired: database ahead", ahead),
        ("repaired: collection ahead", without_first(ahead, args.changed)),
        ("reused again", without_first(ahead, args.changed)),
    )
    with tempfile.TemporaryDirectory() as work, MilvusServer() as milvus:
        store = open_store(f"sqlite:///{Path(work) / 'bench.sqlite3'}")
        backend = MilvusBackend(milvus.url)
        backend.coordinate(store.exclusive)
        try:
            for label, what in steps:
                results[label] = timed_build(backend, args.dim, args.scoring, what)
                print(f"{label}: {results[label]}", file=sys.stderr)
        finally:
            backend.close()
            store.close()
    seconds = [results[label]["seconds"] for label, _ in steps[:4]]  # type: ignore[index]
    print(f"| {args.samples:,} | {args.scoring} | " + " | ".join(f"{s} s" for s in seconds) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

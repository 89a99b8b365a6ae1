"""The scale-out engines next to the defaults, in one process on this machine.

    .venv/bin/python bench/scale.py                       # 100k samples, 128-d
    .venv/bin/python bench/scale.py --samples 20000 --dim 512 --out scale.json

Storage: SQLite and PostgreSQL (a throwaway PostgreSQL 16 from the pgserver wheel on loopback,
fsync off, so the figures are the store's own cost, not the disk's) through `open_store`:
bulk import, loading a gallery's embeddings (what every start does), single enrolments
(one subject + one sample, as the API does them) and `opengallery db copy` of the SQLite file.

Index: FAISS in process against Milvus (a `milvus-lite server` on loopback, FLAT): building a
gallery's index, its memory per template (the resident set of the process that holds the
vectors, after the build minus before: this process for FAISS, the server for Milvus), and
identify-style searches (top-5 subjects, one probe per call) from 1 and more client threads
at once: searches/s, p50 and p99. milvus-lite is a single-process Python engine for
development: its figures are a floor for the protocol overhead, not a prediction for Milvus
standalone or distributed.

    .venv/bin/python bench/scale.py --index-only --samples 1000000 --clients 1,4

Results print as a Markdown table and, with --out, as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scale_search import rss_bytes  # noqa: E402

from service.core.memory import release_free_memory  # noqa: E402
from service.index import IndexContents, SubjectSearch, open_index  # noqa: E402
from service.storage import NewSample, Store, open_store  # noqa: E402
from service.storage.postgres.copy import copy_sqlite_to_postgres  # noqa: E402
from service.testing_engines import (  # noqa: E402
    MilvusServer,
    PostgresServer,
    create_database,
    with_database,
)

MODEL = "bench@1"


def unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def items(vectors: np.ndarray, per_subject: int) -> list[tuple[str, NewSample]]:
    return [
        (
            f"s{i // per_subject:07d}",
            NewSample(hashlib.sha256(v.tobytes()).hexdigest(), "embedding", v),
        )
        for i, v in enumerate(vectors)
    ]


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def bench_store(store: Store, vectors: np.ndarray, per_subject: int, singles: int) -> dict:
    store.create_gallery("bench", MODEL, 0.01, "max", False)
    started = time.perf_counter()
    for start in range(0, len(vectors), 10_000):
        store.bulk_enrol("bench", MODEL, items(vectors[start : start + 10_000], per_subject))
    bulk = time.perf_counter() - started
    started = time.perf_counter()
    loaded = store.load_embeddings("bench", MODEL)
    load = time.perf_counter() - started
    assert loaded.vectors.shape == vectors.shape
    rng = np.random.default_rng(1)
    latencies = []
    for i in range(singles):
        vector = unit_vectors(rng, 1, vectors.shape[1])[0]
        sample = NewSample(hashlib.sha256(vector.tobytes()).hexdigest(), "embedding", vector)
        started = time.perf_counter()
        store.put_subject("bench", f"single{i}", None)
        store.add_samples("bench", f"single{i}", MODEL, [sample])
        latencies.append(time.perf_counter() - started)
    return {
        "bulk_import_per_s": len(vectors) / bulk,
        "load_embeddings_s": load,
        **{f"enrol_{k}": v for k, v in percentiles(latencies).items()},
    }


def search_load(index: SubjectSearch, probes: np.ndarray, clients: int) -> dict:
    """Every probe searched once (top 5), by `clients` threads at once."""

    def one_client(share: np.ndarray) -> list[float]:
        latencies = []
        for probe in share:
            started = time.perf_counter()
            index.search(probe[None, :], 5)
            latencies.append(time.perf_counter() - started)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        shares = pool.map(one_client, np.array_split(probes, clients))
        latencies = [latency for share in shares for latency in share]
    wall = time.perf_counter() - started
    return {"searches_per_s": len(probes) / wall, **percentiles(latencies)}


def bench_index(
    backend_url: str | None,
    contents: IndexContents,
    probes: np.ndarray,
    clients: list[int],
    holder_pid: int,
) -> dict:
    """`holder_pid`: the process that holds the vectors (this one, or the index server)."""
    backend = open_index(backend_url)
    release_free_memory()
    before = rss_bytes(holder_pid)
    started = time.perf_counter()
    index = backend.build(
        contents.vectors.shape[1], "max", contents, gallery="bench", model_id=MODEL
    )
    build = time.perf_counter() - started
    release_free_memory()
    per_template = (rss_bytes(holder_pid) - before) / len(contents.vectors)
    figures = {"build_s": build, "memory_per_template_bytes": per_template}
    for count in clients:
        load = search_load(index, probes, count)
        figures.update({f"{count}_clients_{k}": v for k, v in load.items()})
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-subject", type=int, default=5)
    parser.add_argument("--singles", type=int, default=300, help="single enrolments timed")
    parser.add_argument("--probes", type=int, default=300, help="searches timed")
    parser.add_argument(
        "--milvus-probes",
        type=int,
        default=None,
        help="searches timed on Milvus (default: --probes; milvus-lite takes seconds each)",
    )
    parser.add_argument("--clients", default="1", help="client threads (comma-separated)")
    parser.add_argument("--index-only", action="store_true", help="skip the store figures")
    parser.add_argument("--no-milvus", action="store_true", help="FAISS only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    clients = [int(count) for count in args.clients.split(",")]
    rng = np.random.default_rng(0)
    vectors = unit_vectors(rng, args.samples, args.dim)
    results: dict[str, dict] = {}
    if not args.index_only:
        bench_stores(args, vectors, results)

    subjects = np.arange(args.samples, dtype=np.int64) // args.per_subject
    contents = IndexContents(
        np.arange(1, args.samples + 1, dtype=np.int64),
        subjects,
        vectors,
        {int(pk): f"s{pk:07d}" for pk in np.unique(subjects)},
    )
    probes = unit_vectors(rng, args.probes, args.dim)
    results["index faiss"] = bench_index(None, contents, probes, clients, os.getpid())
    print(f"index faiss: {results['index faiss']}", file=sys.stderr)
    if not args.no_milvus:
        milvus_probes = probes[: args.milvus_probes or args.probes]
        with MilvusServer() as milvus:
            assert milvus.process is not None
            results["index milvus-lite"] = bench_index(
                milvus.url, contents, milvus_probes, clients, milvus.process.pid
            )
        print(f"index milvus-lite: {results['index milvus-lite']}", file=sys.stderr)
    results["machine"] = {"load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count() or 0}

    print(f"\n{args.samples} samples of dimension {args.dim}, {args.per_subject} per subject\n")
    print("| what | figures |\n| --- | --- |")
    for name, figures in results.items():
        shown = ", ".join(f"{key} {value:,.2f}" for key, value in figures.items())
        print(f"| {name} | {shown} |")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, **results}))
    return 0


def bench_stores(args: argparse.Namespace, vectors: np.ndarray, results: dict[str, dict]) -> None:
    with tempfile.TemporaryDirectory() as scratch, PostgresServer() as postgres:
        sqlite_file = Path(scratch) / "bench.sqlite3"
        for name, url in (
            ("sqlite", f"sqlite:///{sqlite_file}"),
            ("postgresql", with_database(postgres.admin_url, "bench")),
        ):
            if name == "postgresql":
                create_database(postgres.admin_url, "bench")
            store = open_store(url)
            try:
                results[f"store {name}"] = bench_store(
                    store, vectors, args.per_subject, args.singles
                )
            finally:
                store.close()
            print(f"store {name}: {results[f'store {name}']}", file=sys.stderr)
        create_database(postgres.admin_url, "copy")
        started = time.perf_counter()
        copied = copy_sqlite_to_postgres(sqlite_file, with_database(postgres.admin_url, "copy"))
        elapsed = time.perf_counter() - started
        results["db copy"] = {"samples_per_s": copied.rows["samples"] / elapsed, "total_s": elapsed}
        print(f"db copy: {results['db copy']}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())

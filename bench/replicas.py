"""Replicas on one machine: cross-replica visibility delay under enrolment load, and identify
throughput with 1 and 2 replicas and with `serve --workers 2`.

    .venv/bin/python bench/replicas.py                          # 10k samples, 64-d
    .venv/bin/python bench/replicas.py --samples 50000 --out replicas.json
    PYTHONPATH=../main .venv/bin/python bench/replicas.py --single   # another checkout's server

`--single` measures only the default deployment (one process, SQLite, FAISS): identify
throughput and one-by-one enrolments. The servers run the code that PYTHONPATH names (the
checkout of this script when unset), so the same command measures two checkouts A/B.

Each server is a real `opengallery serve` process on a loopback port. PostgreSQL is a
throwaway PostgreSQL 16 from the pgserver wheel on loopback (fsync off: the figures are the
service's, not the disk's); SQLite is the default file under a data directory. The gallery is
filled through the store before the servers start (each indexes it at start, as a restart does).

- Visibility: while enrolment load runs against replica A (`--load-clients` clients posting
  one sample each, back to back), a marker sample is enrolled on A and replica B is asked
  (identify, top-1, as fast as B answers) until it names the marker's subject; the delay runs
  from A's acknowledgement to B's first right answer. On PostgreSQL B wakes on a notification
  (LISTEN/NOTIFY); on SQLite it polls the change log every 100 ms.
- Throughput: identify of one embedding (top-5) by `--clients` keep-alive clients spread over the
  servers' connections for `--seconds` seconds; requests/s and p50/p99 latency. With
  `--workers 2` the clients' connections are spread by the kernel over the two processes.

Probes and samples are embeddings (no image decoding or inference): what replicas add to the
serving path, not the model's cost. Results print as Markdown tables and, with --out, as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from models.testing import make_random_bundle  # noqa: E402
from service.storage import NewSample, open_store  # noqa: E402
from service.testing import ServerProcess  # noqa: E402
from service.testing_engines import PostgresServer, create_database, with_database  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
GALLERY = "bench"
HEADERS = {"X-API-Key": ADMIN_KEY}


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill(database_url: str, model_id: str, vectors: np.ndarray, per_subject: int = 5) -> None:
    store = open_store(database_url)
    try:
        store.create_gallery(GALLERY, model_id, 0.01, "max", True)
        items = [
            (
                f"s{i // per_subject:07d}",
                NewSample(hashlib.sha256(v.tobytes()).hexdigest(), "embedding", v),
            )
            for i, v in enumerate(vectors)
        ]
        for start in range(0, len(items), 5000):
            store.bulk_enrol(GALLERY, model_id, items[start : start + 5000])
    finally:
        store.close()


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered), p99


@contextmanager
def servers(
    root: Path, bundle: Path, database_url: str, count: int, workers: int = 1
) -> Iterator[list[ServerProcess]]:
    env = {"OPENGALLERY_DATABASE_URL": database_url, "OPENGALLERY_LOG_LEVEL": "warning"}
    if workers > 1:
        env["OPENGALLERY_WORKERS"] = str(workers)
    with ExitStack() as stack:
        started = []
        for i in range(count):
            server = ServerProcess(
                root / f"replica-{i}-{time.monotonic_ns()}",
                bundle,
                admin_key=ADMIN_KEY,
                env=env,
                log_path=root / "servers.log",
            )
            stack.callback(server.stop)
            started.append(server.start(timeout=300))
        yield started


def enrol(http: httpx.Client, subject: str, vector: np.ndarray) -> None:
    body = {
        "create_subjects": True,
        "items": [{"subject_id": subject, "embedding": vector.tolist()}],
    }
    response = http.post(f"/v1/galleries/{GALLERY}/samples", json=body)
    response.raise_for_status()


def visibility(
    a: ServerProcess, b: ServerProcess, dim: int, markers: int, load_clients: int
) -> dict[str, float]:
    """Delays (s) from A acknowledging a marker to B finding it, under enrolment load on A."""
    stop = threading.Event()
    loaded = [0] * load_clients

    def load(worker: int) -> None:
        rng = np.random.default_rng(1000 + worker)
        with httpx.Client(base_url=a.url, headers=HEADERS, timeout=60) as http:
            while not stop.is_set():
                enrol(http, f"load-{worker}-{loaded[worker]}", unit_vectors(rng, 1, dim)[0])
                loaded[worker] += 1

    threads = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(load_clients)]
    for thread in threads:
        thread.start()
    rng = np.random.default_rng(7)
    delays = []
    started = time.perf_counter()
    with (
        httpx.Client(base_url=a.url, headers=HEADERS, timeout=60) as on_a,
        httpx.Client(base_url=b.url, headers=HEADERS, timeout=60) as on_b,
    ):
        for i in range(markers):
            # A random pause first: markers must not fall in step with SQLite's poll period.
            time.sleep(rng.uniform(0.0, 0.2))
            marker = unit_vectors(rng, 1, dim)[0]
            enrol(on_a, f"marker-{i}", marker)
            acknowledged = time.perf_counter()
            probe = {"embeddings": [marker.tolist()], "top_k": 1}
            while True:
                found = on_b.post(f"/v1/galleries/{GALLERY}/identify", json=probe).json()
                candidates = found["results"][0]["candidates"]
                if candidates and candidates[0]["subject_id"] == f"marker-{i}":
                    break
            delays.append(time.perf_counter() - acknowledged)
    wall = time.perf_counter() - started
    stop.set()
    # (the pauses between markers count in the wall time: the load ran through them)
    for thread in threads:
        thread.join()
    p50, p99 = percentiles(delays)
    slow = [round(1000 * d) for d in delays if d > 0.25]
    if slow:
        print(f"delays over 250 ms: {slow}", file=sys.stderr, flush=True)
    return {
        "markers": markers,
        "p50_ms": 1000 * p50,
        "p99_ms": 1000 * p99,
        "max_ms": 1000 * max(delays),
        "load_enrolments_per_s": (sum(loaded) + markers) / wall,
    }


def throughput(urls: list[str], dim: int, clients: int, seconds: float) -> dict[str, float]:
    """Identify requests/s of `clients` keep-alive clients spread over `urls`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        probes = [
            json.dumps({"embeddings": [v.tolist()], "top_k": 5}).encode()
            for v in unit_vectors(rng, 64, dim)
        ]
        headers = {**HEADERS, "content-type": "application/json"}
        host, port = urls[worker % len(urls)].removeprefix("http://").split(":")
        # http.client: the lightest keep-alive client of the standard library (it shares the
        # machine's cores with the servers).
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        path = f"/v1/galleries/{GALLERY}/identify"
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            connection.request("POST", path, body=probes[i % 64], headers=headers)
            response = connection.getresponse()
            response.read()
            latencies[worker].append(time.perf_counter() - t0)
            if response.status != 200:
                raise RuntimeError(f"identify: HTTP {response.status}")
            i += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    everything = [latency for worker in latencies for latency in worker]
    p50, p99 = percentiles(everything)
    return {"per_s": len(everything) / wall, "p50_ms": 1000 * p50, "p99_ms": 1000 * p99}


def enrolments(url: str, dim: int, count: int) -> dict[str, float]:
    """One client enrolling one sample per request, `count` times: enrolments/s, p50/p99."""
    rng = np.random.default_rng(99)
    vectors = unit_vectors(rng, count, dim)
    latencies = []
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as http:
        started = time.perf_counter()
        for i, vector in enumerate(vectors):
            t0 = time.perf_counter()
            enrol(http, f"one-{i}", vector)
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {"per_s": count / wall, "p50_ms": 1000 * p50, "p99_ms": 1000 * p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--markers", type=int, default=100)
    parser.add_argument("--load-clients", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--enrolments", type=int, default=500)
    parser.add_argument("--single", action="store_true", help="only 1 process on SQLite")
    parser.add_argument("--visibility-only", action="store_true", help="only the visibility delays")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: dict[str, object] = {"args": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp, ExitStack() as stack:
        pg = None if args.single else stack.enter_context(PostgresServer())
        root = Path(tmp)
        bundle = root / "bundle"
        make_random_bundle(bundle, seed=0, embedding_dim=args.dim)
        model_id = load_bundle(bundle).model_id
        vectors = unit_vectors(np.random.default_rng(0), args.samples, args.dim)

        def database(kind: str) -> str:
            if kind == "sqlite":
                url = f"sqlite:///{root / f'{time.monotonic_ns()}.sqlite3'}"
            else:
                assert pg is not None
                name = f"bench_{time.monotonic_ns()}"
                create_database(pg.admin_url, name)
                url = with_database(pg.admin_url, name)
            fill(url, model_id, vectors)
            return url

        with servers(root, bundle, database("sqlite"), 1) as (single,):
            one_by_one = enrolments(
                single.url, args.dim, 1 if args.visibility_only else args.enrolments
            )
        print(f"enrolments, 1 replica, SQLite: {one_by_one}", file=sys.stderr, flush=True)
        results["enrolments"] = one_by_one
        visible: dict[str, dict[str, float]] = {}
        for kind in () if args.single else ("postgresql", "sqlite"):
            with servers(root, bundle, database(kind), 2) as (a, b):
                visible[kind] = visibility(a, b, args.dim, args.markers, args.load_clients)
            print(f"visibility on {kind}: {visible[kind]}", file=sys.stderr, flush=True)
        results["visibility"] = visible

        rates: dict[str, dict[str, float]] = {}
        configurations = [
            ("1 replica, SQLite", "sqlite", 1, 1),
            ("serve --workers 2, SQLite", "sqlite", 1, 2),
            ("1 replica, PostgreSQL", "postgresql", 1, 1),
            ("2 replicas, PostgreSQL", "postgresql", 2, 1),
        ]
        if args.single:
            configurations = configurations[:1]
        if args.visibility_only:
            configurations = []
        for name, kind, count, workers in configurations:
            with servers(root, bundle, database(kind), count, workers) as started:
                rates[name] = throughput(
                    [s.url for s in started], args.dim, args.clients, args.seconds
                )
            print(f"{name}: {rates[name]}", file=sys.stderr, flush=True)
        results["identify"] = rates
    results["load_average"] = os.getloadavg()

    print(
        f"\n{args.samples} samples of dimension {args.dim}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    print(
        f"one-by-one enrolments, 1 replica, SQLite: {one_by_one['per_s']:.0f}/s, "
        f"p50 {one_by_one['p50_ms']:.1f} ms, p99 {one_by_one['p99_ms']:.1f} ms\n"
    )
    print("| visibility on B of a sample acknowledged by A | p50 | p99 | max | load on A |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, row in visible.items():
        print(
            f"| {kind} ({row['markers']:.0f} markers) | {row['p50_ms']:.1f} ms "
            f"| {row['p99_ms']:.1f} ms | {row['max_ms']:.1f} ms "
            f"| {row['load_enrolments_per_s']:.0f} enrolments/s |"
        )
    print(f"\n| identify, {args.clients} clients, top-5 | requests/s | p50 | p99 |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in rates.items():
        print(f"| {name} | {row['per_s']:.0f} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Dynamic batching on or off: identify throughput at 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/batching.py                          # random linear bundle
    .venv/bin/python bench/batching.py --model models/default --model random
    .venv/bin/python bench/batching.py --clients 1,8,32 --requests 600 --rounds 2

Two measurements, side by side in one run, for each bundle:
- HTTP: `opengallery serve` in a subprocess on loopback (OPENGALLERY_BATCHING=false/true, the
  other settings at their defaults unless given), a gallery of 1024 samples, N clients
  (threads, one keep-alive connection each) sending identify requests with one PNG probe.
- In process: N threads calling `embed_images([one image])` on a plain `Embedder` and on a
  `BatchingEmbedder` (the inference alone, no HTTP, no search).
Cells alternate off/on (both servers run side by side) for --rounds rounds; the table shows
the median of the rounds and the ratio on/off. The machine's load average is reported too.
Results print as Markdown (copy into docs/benchmarks.md) and, with --out, as JSON.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import Bundle, load_bundle  # noqa: E402
from service.core.batching import BatchingEmbedder  # noqa: E402
from service.core.embedder import Embedder  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.testing import ServerProcess, png_bytes  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"  # the key bench/service.py's RawClient sends
DEFAULT_WAIT_MS = Settings().batch_max_wait_ms


def run_clients(clients: int, total: int, call_factory, cpu_seconds=time.process_time):  # type: ignore[no-untyped-def]
    """`clients` threads share `total` calls: throughput, latency percentiles, and the CPU
    time per call of the process `cpu_seconds` reads (steadier than throughput on a machine
    shared with other work)."""
    per_client = max(1, total // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(slot: int) -> None:
        call = call_factory()
        call()  # warm: connection, first inference
        barrier.wait()
        for _ in range(per_client):
            started = time.perf_counter()
            call()
            latencies[slot].append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu_before = time.perf_counter(), cpu_seconds()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    ordered = sorted(x for per in latencies for x in per)
    return {
        "per_s": len(ordered) / wall,
        "cpu_ms": 1000 * cpu / len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def _load_service_bench():  # type: ignore[no-untyped-def]
    """bench/service.py's RawClient (the light stdlib load generator): one way to do it."""
    spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_server(bundle: Bundle, workdir: Path, batching: bool, env: dict[str, str]):  # type: ignore[no-untyped-def]
    server = ServerProcess(
        workdir / ("on" if batching else "off"),
        bundle.path,
        admin_key=ADMIN_KEY,
        env={**env, "OPENGALLERY_BATCHING": "true" if batching else "false"},
    ).start()
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as admin:
        # The smallest FPIR the bundle's calibration set supports (10 / M).
        fpir = min(1.0, 10.0 / len(bundle.load_calibration()))
        admin.post("/v1/galleries", json={"name": "bench", "fpir": fpir}).raise_for_status()
        rng = np.random.default_rng(0)
        for subject in range(16):
            admin.put(f"/v1/galleries/bench/subjects/s{subject}").raise_for_status()
            vectors = rng.standard_normal((64, bundle.manifest.embedding_dim))
            admin.post(
                f"/v1/galleries/bench/subjects/s{subject}/samples",
                json={"embeddings": vectors.tolist()},
            ).raise_for_status()
    return server


def http_cells(bundle: Bundle, clients: list[int], requests: int, rounds: int, env: dict) -> dict:
    """Both servers up at once; cells alternate off/on so drift in the machine's load hits
    both alike. Returns {batching: {clients: [round results]}}."""
    service_bench = _load_service_bench()
    raw_client = service_bench.RawClient
    side = bundle.manifest.input.shape[1:]
    body = json.dumps(
        {
            "images": [
                base64.b64encode(png_bytes(7, side[::-1], bundle.manifest.input.color)).decode()
            ]
        }
    ).encode()
    results: dict[bool, dict[int, list]] = {False: {}, True: {}}
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as workdir:
        servers = {b: start_server(bundle, Path(workdir), b, env) for b in (False, True)}
        try:
            for n in clients:
                for _ in range(rounds):
                    for batching, server in servers.items():

                        def factory(url: str = server.url):  # type: ignore[no-untyped-def]
                            client = raw_client(url)
                            return lambda: client.post(
                                "/v1/galleries/bench/identify", body, "application/json"
                            )

                        assert server.process is not None
                        pid = server.process.pid
                        cell = run_clients(
                            n,
                            requests,
                            factory,
                            lambda pid=pid: service_bench.process_cpu_seconds(pid),
                        )
                        results[batching].setdefault(n, []).append(cell)
                print(f"  {bundle.model_id} HTTP {n} clients done", file=sys.stderr, flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return results


def in_process_cells(
    bundle: Bundle, clients: list[int], requests: int, rounds: int, env: dict
) -> dict:
    max_size = int(env.get("OPENGALLERY_BATCH_MAX_SIZE", 32))
    max_wait = float(env.get("OPENGALLERY_BATCH_MAX_WAIT_MS", DEFAULT_WAIT_MS))
    embedders = {
        False: Embedder(bundle, threads=1),
        True: BatchingEmbedder(bundle, threads=1, max_batch_size=max_size, max_wait_ms=max_wait),
    }
    side = bundle.manifest.input.shape[1:]
    image = Image.open(BytesIO(png_bytes(7, side[::-1], bundle.manifest.input.color)))
    image.load()
    results: dict[bool, dict[int, list]] = {False: {}, True: {}}
    try:
        for n in clients:
            for _ in range(rounds):
                for batching, embedder in embedders.items():
                    cell = run_clients(
                        n, requests, lambda e=embedder: lambda: e.embed_images([image])
                    )
                    results[batching].setdefault(n, []).append(cell)
    finally:
        embedders[True].close()  # type: ignore[attr-defined]
    return results


def median_of(cells: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(cell[key] for cell in cells) for key in cells[0]}


def compare(
    bundles: list[Bundle],
    *,
    clients: list[int],
    requests: int,
    rounds: int,
    env: dict[str, str],
    http: bool = True,
) -> dict:
    """Batching off vs on for each bundle (in process, and over HTTP unless `http` is False);
    `env` holds OPENGALLERY_BATCH_* overrides. Also used by bench/service.py --batching."""
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    paths = [("in-process", in_process_cells)]
    if http:
        paths.append(("HTTP", http_cells))
    for bundle in bundles:
        for path_name, measure in paths:
            results = measure(bundle, clients, requests, rounds, env)
            for n in clients:
                rows.append(
                    {
                        "bundle": bundle.model_id,
                        "path": path_name,
                        "clients": n,
                        "off": median_of(results[False][n]),
                        "on": median_of(results[True][n]),
                    }
                )
    return {
        "load_before": load_before,
        "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "settings": {
            "max_size": int(env.get("OPENGALLERY_BATCH_MAX_SIZE", 32)),
            "max_wait_ms": float(env.get("OPENGALLERY_BATCH_MAX_WAIT_MS", DEFAULT_WAIT_MS)),
        },
        "rounds": rounds,
        "requests": requests,
        "rows": rows,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Batching settings: {report['settings']}; {report['rounds']} rounds, "
        f"{report['requests']} requests per cell; {report['machine']}; load average "
        f"{report['load_before']} before, {report['load_after']} after",
        "",
        "| bundle | path | clients | off req/s | on req/s | on/off | off p50/p99 ms "
        "| on p50/p99 ms | CPU ms/req off | on |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        off, on = row["off"], row["on"]
        lines.append(
            f"| {row['bundle']} | {row['path']} | {row['clients']} | {off['per_s']:.0f} "
            f"| {on['per_s']:.0f} | {on['per_s'] / off['per_s']:.2f} "
            f"| {off['p50_ms']:.1f} / {off['p99_ms']:.1f} | {on['p50_ms']:.1f} / "
            f"{on['p99_ms']:.1f} | {off['cpu_ms']:.2f} | {on['cpu_ms']:.2f} |"
        )
    lines += [
        "",
        "CPU ms/req: CPU time of the server process (HTTP) or of this process (in-process) "
        "per request.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="bundle to measure (repeatable); 'random' = a random linear bundle (the default)",
    )
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients (comma-separated)")
    parser.add_argument("--requests", type=int, default=600, help="requests per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds")
    parser.add_argument("--max-size", type=int, help="OPENGALLERY_BATCH_MAX_SIZE (default 32)")
    parser.add_argument("--max-wait-ms", type=float, help="OPENGALLERY_BATCH_MAX_WAIT_MS")
    parser.add_argument("--skip-http", action="store_true", help="in-process rows only")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    env = {}
    if args.max_size is not None:
        env["OPENGALLERY_BATCH_MAX_SIZE"] = str(args.max_size)
    if args.max_wait_ms is not None:
        env["OPENGALLERY_BATCH_MAX_WAIT_MS"] = str(args.max_wait_ms)
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as workdir:
        bundles = []
        for path in args.model or [Path("random")]:
            if str(path) == "random":
                from models.testing import make_random_bundle

                random_dir = Path(workdir) / "random"
                bundles.append(make_random_bundle(random_dir, seed=0, embedding_dim=64))
            else:
                bundles.append(load_bundle(path))
        report = compare(
            bundles,
            clients=clients,
            requests=args.requests,
            rounds=args.rounds,
            env=env,
            http=not args.skip_http,
        )
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

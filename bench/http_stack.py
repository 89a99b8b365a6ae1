"""A/B of the server's HTTP stack: uvicorn's event loop and HTTP parser, side by side.

    .venv/bin/python bench/http_stack.py --size 100000 --requests 1000 --rounds 4 \\
        asyncio:h11 uvloop:httptools uvloop:httptools:omp-unset

One server process per configuration ("loop:http", uvicorn's names; a third part "omp-unset"
leaves OMP_NUM_THREADS unset. That arm measured the per-thread OpenMP bug of commit d4b1846;
since service/index/flat.py applies the search thread count in every searching thread, it
should match the plain arm), all serving the same gallery at once; rounds alternate between
them so that the load of a shared machine falls on every configuration alike. Each round sends
single embedding probes from one keep-alive client (as bench/service.py's "embedding x1"),
then the same number from 4 concurrent clients, and reads the server's CPU time per request,
the steadier figure on a loaded machine. Needs the packages of each configuration installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from service.testing import free_port, wait_ready  # noqa: E402

# The service as `opengallery serve` runs it, with the loop and parser forced.
CLIENTS = 4
SERVER = """
import sys, uvicorn
from service.api.app import create_app
from service.cli import configure_logging
from service.settings import Settings
data_dir, model, port, loop, http = sys.argv[1:6]
settings = Settings(data_dir=data_dir, model=model, port=int(port), log_level="warning")
configure_logging("warning")
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(port), log_level="warning",
            access_log=False, loop=loop, http=http)
"""


def _bench_service():  # type: ignore[no-untyped-def]
    """bench/service.py as a module (bench/ is not a package): its client and helpers."""
    spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help='"loop:http[:omp-unset]", e.g. asyncio:h11')
    parser.add_argument("--size", type=int, default=100_000, help="gallery size")
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()
    bench = _bench_service()
    bundle = load_bundle(args.model)
    rng = np.random.default_rng(0)
    dim = bundle.manifest.embedding_dim
    path = f"/v1/galleries/{bench.GALLERY}/identify"
    bodies = [
        json.dumps({"embeddings": [vector], "top_k": bench.TOP_K}).encode()
        for vector in bench.unit_vectors(rng, 512, dim).tolist()
    ]
    results: dict[str, list[dict[str, float]]] = {config: [] for config in args.configs}
    with tempfile.TemporaryDirectory(prefix="opengallery-http-stack-") as tmp:
        data_dir = Path(tmp) / "data"
        bench.fill_gallery(data_dir, bundle, bench.unit_vectors(rng, args.size, dim))
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("OPENGALLERY_") and k != "OMP_NUM_THREADS"
        }
        environment["OPENGALLERY_ADMIN_KEY"] = bench.ADMIN_KEY
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for config in args.configs:
                loop, http, *extra = config.split(":")
                env = dict(environment)
                if "omp-unset" not in extra:
                    env["OMP_NUM_THREADS"] = "1"  # as `opengallery serve` sets it
                port = free_port()
                command = [sys.executable, "-c", SERVER, str(data_dir), str(args.model)]
                process = subprocess.Popen([*command, str(port), loop, http], env=env, cwd=ROOT)
                url = f"http://127.0.0.1:{port}"
                servers[config] = (process, url)
                wait_ready(url, 600, process)
                client = bench.RawClient(url)
                for i in range(50):  # warm-up: calibrates the threshold
                    client.post(path, bodies[i], "application/json")
                client.close()
            load = os.getloadavg()[0]
            for _ in range(args.rounds):
                for config, (process, url) in servers.items():
                    client = bench.RawClient(url)
                    cpu_before = bench.process_cpu_seconds(process.pid)
                    latencies, wall = bench.timed_loop(
                        lambda i, c=client: c.post(path, bodies[i % 512], "application/json"),
                        args.requests,
                    )
                    cpu = bench.process_cpu_seconds(process.pid) - cpu_before
                    client.close()
                    summary = bench.summarise(latencies, args.requests, wall)
                    summary["cpu_ms"] = 1000 * cpu / args.requests

                    def worker(number: int, url: str = url) -> list[float]:
                        own = bench.RawClient(url)
                        share = args.requests // CLIENTS
                        try:
                            return bench.timed_loop(
                                lambda i: own.post(
                                    path, bodies[(number * share + i) % 512], "application/json"
                                ),
                                share,
                            )[0]
                        finally:
                            own.close()

                    cpu_before = bench.process_cpu_seconds(process.pid)
                    started = time.perf_counter()
                    with ThreadPoolExecutor(CLIENTS) as pool:
                        latencies = [t for part in pool.map(worker, range(CLIENTS)) for t in part]
                    wall = time.perf_counter() - started
                    cpu = bench.process_cpu_seconds(process.pid) - cpu_before
                    concurrent = bench.summarise(latencies, len(latencies), wall)
                    summary["c_per_s"] = concurrent["per_s"]
                    summary["c_p99_ms"] = concurrent["p99_ms"]
                    summary["c_cpu_ms"] = 1000 * cpu / len(latencies)
                    results[config].append(summary)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    base = statistics.median(r["cpu_ms"] for r in results[args.configs[0]])
    print(
        f"gallery {args.size}, {args.rounds} alternating rounds of {args.requests} requests "
        f"(medians over rounds); one-minute load average {load:.1f} at the start\n"
    )
    print(
        "| loop:http | clients | requests/s | p50 ms | p99 ms | server CPU ms/request "
        f"| CPU vs {args.configs[0]} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_c = statistics.median(r["c_cpu_ms"] for r in results[args.configs[0]])
    for config, rounds in results.items():

        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"| {config} | 1 | {median('per_s'):.0f} | {median('p50_ms'):.2f} "
            f"| {median('p99_ms'):.2f} | {median('cpu_ms'):.3f} | {median('cpu_ms') / base:.2f} |"
        )
        print(
            f"| {config} | {CLIENTS} | {median('c_per_s'):.0f} | | {median('c_p99_ms'):.2f} "
            f"| {median('c_cpu_ms'):.3f} | {median('c_cpu_ms') / base_c:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A/B of the server's HTTP stack: uvicorn's event loop and HTTP parser, side by side.

    .venv/bin/python bench/http_stack.py --size 100000 --requests 1000 --rounds 4 \\
        asyncio:h11 uvloop:httptools

One server process per configuration ("loop:http", uvicorn's names), all serving the same
gallery at once; rounds alternate between them so that the load of a shared machine falls on
every configuration alike. Each round sends single embedding probes from one keep-alive
client (as bench/service.py's "embedding x1") and reads the server's CPU time per request,
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from service.testing import free_port, wait_ready  # noqa: E402

# The service as `opengallery serve` runs it, with the loop and parser forced.
SERVER = """
import sys, uvicorn
from service.app import create_app
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
    parser.add_argument("configs", nargs="+", help='"loop:http", e.g. asyncio:h11')
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
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENGALLERY_")}
        environment["OPENGALLERY_ADMIN_KEY"] = bench.ADMIN_KEY
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for config in args.configs:
                loop, http = config.split(":")
                port = free_port()
                command = [sys.executable, "-c", SERVER, str(data_dir), str(args.model)]
                process = subprocess.Popen(
                    [*command, str(port), loop, http], env=environment, cwd=ROOT
                )
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
                    results[config].append(summary)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    base = statistics.median(r["cpu_ms"] for r in results[args.configs[0]])
    print(f"gallery {args.size}, {args.rounds} alternating rounds of {args.requests} requests; ")
    print(f"one-minute load average {load:.1f} at the start\n")
    print(
        "| loop:http | requests/s (median) | p50 ms | p99 ms | server CPU ms/request "
        f"| CPU vs {args.configs[0]} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for config, rounds in results.items():
        cpu = statistics.median(r["cpu_ms"] for r in rounds)
        print(
            f"| {config} | {statistics.median(r['per_s'] for r in rounds):.0f} "
            f"| {statistics.median(r['p50_ms'] for r in rounds):.2f} "
            f"| {statistics.median(r['p99_ms'] for r in rounds):.2f} "
            f"| {cpu:.3f} | {cpu / base:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

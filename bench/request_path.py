"""The service's own cost per request, without sockets: the ASGI app called in this process.

    PYTHONPATH=. .venv/bin/python bench/request_path.py --model models/default --size 1000

Everything a request goes through inside the app (middleware, routing, dependencies, body
parsing, the worker-thread hop, recognition, the response) and nothing outside it (no HTTP
parser, no client on the same cores), so that changes to the request path show up with less
noise than over HTTP (bench/service.py). Prints CPU microseconds per request (this process,
all threads; median of --rounds) for identify with one JSON embedding, one multipart PNG and
32 JSON embeddings. Run it in two checkouts to compare them (a copy of it runs in a checkout
that lacks it).

Instructions per request, steadier than CPU time on a shared machine: the difference of two
runs under `valgrind --tool=callgrind` ("Collected"), e.g. `--only "embedding x1" --rounds 1`
with `--requests 100` and `--requests 500`, over 400.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from service.testing import png_bytes  # noqa: E402


def _bench_service() -> Any:
    """bench/service.py as a module (bench/ is not a package): its gallery filler and bodies."""
    spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def start(app: Any) -> tuple[asyncio.Task, asyncio.Queue, asyncio.Queue]:
    """The ASGI lifespan's start-up, as a server runs it."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {message}")
    return task, inbox, outbox


async def post(app: Any, path: str, body: bytes, content_type: str, key: str) -> None:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"x-api-key", key.encode()),
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    status = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"{path}: HTTP {status}")


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    bench = _bench_service()
    bundle = load_bundle(args.model)
    dim = bundle.manifest.embedding_dim
    height, width = bundle.manifest.input.shape[1:]
    mode = "L" if bundle.manifest.input.color == "L" else "RGB"
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="opengallery-request-path-") as tmp:
        data_dir = Path(tmp) / "data"
        bench.fill_gallery(data_dir, bundle, bench.unit_vectors(rng, args.size, dim))
        os.environ.update(
            {
                "OPENGALLERY_DATA_DIR": str(data_dir),
                "OPENGALLERY_MODEL": str(bundle.path),
                "OPENGALLERY_ADMIN_KEY": bench.ADMIN_KEY,
                "OPENGALLERY_LOG_LEVEL": "warning",
            }
        )
        try:
            from service.api.app import create_app
        except ImportError:  # a checkout from before service/api (to compare with one)
            from service.app import create_app  # type: ignore[no-redef]
        from service.settings import Settings

        app = create_app(Settings())
        task, inbox, outbox = await start(app)
        embeddings = bench.unit_vectors(rng, 512, dim).tolist()
        json_type = "application/json"
        bodies = {
            "embedding x1": [
                (json.dumps({"embeddings": [e], "top_k": 5}).encode(), json_type)
                for e in embeddings
            ],
            "image x1": [
                bench.multipart([png_bytes(s, size=(width, height), mode=mode)], {"top_k": "5"})
                for s in range(64)
            ],
            "embedding x32": [
                (json.dumps({"embeddings": embeddings[s : s + 32], "top_k": 5}).encode(), json_type)
                for s in range(0, 480, 32)
            ],
        }
        path = f"/v1/galleries/{bench.GALLERY}/identify"
        try:
            for name, cases in bodies.items():
                if args.only and name != args.only:
                    continue
                for i in range(50):  # warm-up
                    await post(app, path, *cases[i % len(cases)], bench.ADMIN_KEY)
                cpu, wall = [], []
                for _ in range(args.rounds):
                    cpu_started, started = time.process_time(), time.perf_counter()
                    for i in range(args.requests):
                        await post(app, path, *cases[i % len(cases)], bench.ADMIN_KEY)
                    cpu.append(1e6 * (time.process_time() - cpu_started) / args.requests)
                    wall.append(1e6 * (time.perf_counter() - started) / args.requests)
                results[name] = {
                    "cpu_us": statistics.median(cpu),
                    "cpu_us_min": min(cpu),
                    "wall_us": statistics.median(wall),
                }
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await outbox.get()
            await task
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--size", type=int, default=1000, help="gallery size")
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", help='one scenario (e.g. "embedding x1")')
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    try:
        import uvloop  # what `opengallery serve` runs on when installed

        results = uvloop.run(measure(args))
    except ImportError:
        results = asyncio.run(measure(args))
    load = os.getloadavg()[0]
    print(f"`{' '.join(sys.argv)}`, gallery {args.size:,}, load average {load:.1f}\n")
    print("| scenario | CPU µs/request (median) | CPU µs/request (min) | wall µs/request |")
    print("| --- | ---: | ---: | ---: |")
    for name, figures in results.items():
        print(
            f"| {name} | {figures['cpu_us']:.0f} | {figures['cpu_us_min']:.0f} "
            f"| {figures['wall_us']:.0f} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"load_average_1min": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

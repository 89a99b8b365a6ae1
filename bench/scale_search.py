"""The "512-d, cheap network" workload: search and HTTP at 100k and 1M subjects, per index.

    .venv/bin/python bench/scale_search.py --sizes 100000 --index faiss:// \\
        --index 'faiss://?storage=sq8'
    .venv/bin/python bench/scale_search.py --sizes 1000000 --requests 300 \\
        --index 'faiss://?storage=sq8'

The bundle is `models.testing.make_cheap_bundle` (112x112 RGB in, 512-d out, almost no work),
so a request costs search and HTTP, as with a face network on an accelerator. For each gallery
size the gallery is filled once through the store (one subject per template, random unit
vectors), then for each index URL a server (`opengallery serve`, OPENGALLERY_INDEX_URL) starts
on it and answers single-image identify requests (top 5) from 1 and 8 clients. Reported:
requests/s, p50/p99, server CPU per request, server memory per template (resident set after
start minus that of a server on an empty gallery, over the templates), start-up time (the
first, from the database, and a restart, which loads a snapshot where the index has them), the
one-minute load average. For approximate indexes (`ivf=`), recall@1 on the gallery itself:
how often the index's top-1 subject for a probe equals exact search's, over probes that are
noisy copies of gallery templates (mated) and random directions (non-mated).

`--workers 1,2` runs each index with `serve --workers N` for each N (CPU and memory summed over
the server's processes), and `--rounds R` runs every (index, workers) R times in turn.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import Bundle, load_bundle  # noqa: E402
from models.testing import make_cheap_bundle  # noqa: E402
from service.index import IndexContents, SubjectSearch, open_index  # noqa: E402
from service.testing import ServerProcess, png_bytes, worker_pids  # noqa: E402


def _bench_service():  # type: ignore[no-untyped-def]
    """bench/service.py as a module (bench/ is not a package): its store filler and client."""
    spec = importlib.util.spec_from_file_location("bench_service", ROOT / "bench" / "service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service_bench = _bench_service()
ADMIN_KEY = service_bench.ADMIN_KEY
GALLERY = service_bench.GALLERY
TOP_K = 5


def server_pids(pid: int, workers: int) -> list[int]:
    """The processes of a server: `serve` itself, and with `--workers N` its N workers."""
    return [pid, *worker_pids(pid)] if workers > 1 else [pid]


def server_rss(pid: int, workers: int) -> int:
    """The resident sets of the server's processes, summed."""
    return sum(rss_bytes(p) for p in server_pids(pid, workers))


def server_cpu_seconds(pids: list[int]) -> float:
    return sum(service_bench.process_cpu_seconds(p) for p in pids)


def start_server(
    data_dir: Path, bundle: Bundle, url: str, workers: int, log_path: Path, info: bool = False
) -> ServerProcess:
    """`serve` on `data_dir`, returned once every worker has its index: with `--workers N`,
    each worker's slot holds a snapshot (saved when its first start built the index), or, when
    `info` (the log at level info: one line per request, so not for timed load), the log says
    N workers are ready."""
    env = {"OPENGALLERY_INDEX_URL": url, "OPENGALLERY_WORKERS": str(workers)}
    log_path.write_bytes(b"")
    server = ServerProcess(
        data_dir,
        bundle.path,
        admin_key=ADMIN_KEY,
        env=env,
        log_path=log_path,
        log_level="info" if info else "warning",
    ).start(timeout=1800)
    slots = [data_dir / "index" / f"worker-{k}" for k in range(workers)]
    deadline = time.monotonic() + 1800
    while workers > 1 and time.monotonic() < deadline:
        if info:
            if log_path.read_text(errors="replace").count("ready: model") >= workers:
                break
        elif all(any(slot.glob("snapshot-*.json")) for slot in slots):
            break
        time.sleep(0.2)  # polling files another process writes; nothing to wait on
    return server


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def gallery_vectors(size: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):
        chunk = rng.standard_normal((min(100_000, size - start), dim)).astype(np.float32)
        vectors[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def identify_load(
    url: str, pids: list[int], images: list[bytes], requests: int, clients: int
) -> dict:
    path = f"/v1/galleries/{GALLERY}/identify"
    bodies = [service_bench.multipart([image], {"top_k": str(TOP_K)}) for image in images]
    per_client = max(requests // clients, 1)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    split: list[int] = []
    # With several workers, once every client has connected: how the kernel split the
    # connections between them (each keep-alive connection stays where it was accepted).
    connected = threading.Barrier(
        clients, action=lambda: split.extend(connections_per_process(pids[1:], port))
    )

    def worker(number: int, timed: bool = True) -> list[float]:
        client = service_bench.RawClient(url)
        try:

            def call(i: int) -> None:
                if timed and i == 1 and len(pids) > 1 and per_client > 1:
                    connected.wait(timeout=120)
                body, content_type = bodies[(number * per_client + i) % len(bodies)]
                client.post(path, body, content_type)

            return service_bench.timed_loop(call, per_client)[0]
        finally:
            client.close()

    worker(0, timed=False)  # warm-up: the first request calibrates the gallery's threshold
    cpu_before = server_cpu_seconds(pids)
    client_cpu_before = time.process_time()  # this process: the clients, on the same cores
    started = time.perf_counter()
    latencies: list[float] = []
    with ThreadPoolExecutor(clients) as pool:
        for own in pool.map(worker, range(clients)):
            latencies += own
    wall = time.perf_counter() - started
    summary = service_bench.summarise(latencies, per_client * clients, wall)
    cpu = server_cpu_seconds(pids) - cpu_before
    summary["server_cpu_ms_per_request"] = 1000 * cpu / (per_client * clients)
    client_cpu = time.process_time() - client_cpu_before
    summary["client_cpu_ms_per_request"] = 1000 * client_cpu / (per_client * clients)
    summary["load_average_1min"] = os.getloadavg()[0]
    if split:
        summary["connections_per_worker"] = sorted(split, reverse=True)
    return summary


def connections_per_process(pids: list[int], port: int) -> list[int]:
    """The established TCP connections on `port` that each process holds (Linux /proc)."""
    established = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
                established.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                held += os.readlink(f"/proc/{pid}/fd/{fd}") in established
            except OSError:  # closed meanwhile
                continue
        counts.append(held)
    return counts


def gallery_index(url: str, vectors: np.ndarray) -> SubjectSearch:
    """`vectors` as an in-process index of `url`: one subject per row, "max" scoring."""
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    contents = IndexContents(ids, ids, vectors, {int(i): f"s{int(i) - 1:07d}" for i in ids})
    return open_index(url).build(vectors.shape[1], "max", contents)


def recall_at_1(url: str, vectors: np.ndarray, probes: int = 500) -> dict:
    """Top-1 agreement with exact search (sq8 storage, exact) on the same gallery."""
    rng = np.random.default_rng(1)
    dim = vectors.shape[1]
    picked = rng.choice(len(vectors), size=probes, replace=False)
    mated = vectors[picked] + 0.6 * rng.standard_normal((probes, dim)).astype(np.float32) / np.sqrt(
        dim
    )
    non_mated = rng.standard_normal((probes, dim)).astype(np.float32)
    approximate = gallery_index(url, vectors)
    exact = gallery_index("faiss://?storage=sq8", vectors)
    result = {}
    for name, queries in (("mated", mated), ("non-mated", non_mated)):
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        found = [row[0].subject_id for row in approximate.search(queries, 1)]
        truth = [row[0].subject_id for row in exact.search(queries, 1)]
        result[name] = float(np.mean([a == b for a, b in zip(found, truth, strict=True)]))
    return result


def search_costs(
    index: SubjectSearch, dim: int, repeats: int = 24, batches: tuple[int, ...] = (1, 8)
) -> dict:
    """In-process search cost per query of `index` (median ms): `batches` queries per call
    (what merged searches share), with one and two FAISS threads."""
    from service.index.faiss import set_search_threads

    rng = np.random.default_rng(2)
    queries = rng.standard_normal((max(batches) * repeats, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    result = {}
    for threads in (1, 2):
        set_search_threads(threads)
        for batch in batches:
            index.search(queries[:batch], TOP_K)
            times = []
            for r in range(repeats):
                started = time.perf_counter()
                index.search(queries[r * batch : (r + 1) * batch], TOP_K)
                times.append((time.perf_counter() - started) / batch)
            result[f"{threads} threads, {batch} per call"] = 1000 * float(np.median(times))
    set_search_threads(1)
    return result


def concurrent_searches(
    index: SubjectSearch, dim: int, callers: int = 8, per_caller: int = 150, rounds: int = 3
) -> list[dict]:
    """In-process searches of `index` from `callers` threads at once, one query each (what
    identify's merged searches see under load): queries/s, p50/p99 ms, queries per merged
    search."""
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((callers * per_caller, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index.search(queries[:1], TOP_K)
    results = []
    for _ in range(rounds):
        latencies: list[list[float]] = [[] for _ in range(callers)]

        def caller(number: int, own: list[float]) -> None:
            for i in range(per_caller):
                query = queries[number * per_caller + i][None, :]
                started = time.perf_counter()
                index.search(query, TOP_K)
                own.append(time.perf_counter() - started)

        searches_before = index.searches  # type: ignore[attr-defined]
        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(caller, range(callers), latencies))
        wall = time.perf_counter() - started
        flat = np.concatenate(latencies)
        searches = index.searches - searches_before  # type: ignore[attr-defined]
        results.append(
            {
                "queries_per_s": len(flat) / wall,
                "p50_ms": 1000 * float(np.percentile(flat, 50)),
                "p99_ms": 1000 * float(np.percentile(flat, 99)),
                "queries_per_search": len(flat) / max(1, searches),
            }
        )
    return results


def run_size(
    bundle: Bundle,
    workdir: Path,
    size: int,
    configs: list[tuple[str, int]],
    requests: int,
    clients: list[int],
    baseline: dict[tuple[str, int], int],
    search_only: bool = False,
    batches: tuple[int, ...] = (1, 8),
    rounds: int = 1,
) -> dict:
    """Each (index URL, worker processes) of `configs` in turn, `rounds` times over (A B A B:
    the machine's other load falls on each alike)."""
    dim = bundle.manifest.embedding_dim
    vectors = gallery_vectors(size, dim)
    data_dir = workdir / f"data-{size}"
    filled = data_dir / "filled.json"  # written once the store holds the whole gallery
    if filled.exists():
        print(f"gallery size {size}: reusing {data_dir}", file=sys.stderr, flush=True)
        fill_s = json.loads(filled.read_text())["fill_s"]
    else:
        print(f"gallery size {size}: filling ...", file=sys.stderr, flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        fill_s = service_bench.fill_gallery(data_dir, bundle, vectors)
        filled.write_text(json.dumps({"fill_s": fill_s, "model": bundle.model_id}))
    images = [png_bytes(seed, size=(112, 112), mode="RGB") for seed in range(64)]
    results: dict = {"fill_s": fill_s, "indexes": {}}
    log_path = workdir / "server.log"
    for round_number in range(1, rounds + 1):
        for url, workers in configs:
            label = f"{url} --workers {workers}, round {round_number}"
            print(f"  {label}: starting ...", file=sys.stderr, flush=True)
            # The first start builds from the database, whatever an earlier run left.
            shutil.rmtree(data_dir / "index", ignore_errors=True)
            load = os.getloadavg()[0]
            utc = time.strftime("%H:%M", time.gmtime())
            started = time.perf_counter()
            server = start_server(data_dir, bundle, url, workers, log_path)
            startup = time.perf_counter() - started
            try:
                assert server.process is not None
                pids = server_pids(server.process.pid, workers)
                memory = server_rss(server.process.pid, workers)
                entry: dict = {
                    "url": url,
                    "workers": workers,
                    "utc": utc,
                    "startup_s": startup,
                    "load_average_at_start": load,
                    "rss_mb": memory / 2**20,
                    "bytes_per_template": (memory - baseline[url, workers]) / size,
                }
                for count in clients:
                    print(f"  {label}: {count} clients ...", file=sys.stderr, flush=True)
                    entry[f"{count} clients"] = identify_load(
                        server.url, pids, images, requests, count
                    )
                entry["rss_mb_after_load"] = server_rss(server.process.pid, workers) / 2**20
            finally:
                server.stop()  # a graceful stop: an index with snapshots saves one
            # The start that matters in operation: a restart, the database unchanged.
            started = time.perf_counter()
            again = start_server(data_dir, bundle, url, workers, log_path, info=True)
            try:
                entry["restart_s"] = time.perf_counter() - started
                assert again.process is not None
                pids = server_pids(again.process.pid, workers)
                identify_load(again.url, pids, images, 8, 1)
                memory = server_rss(again.process.pid, workers)
                entry["restart_bytes_per_template"] = (memory - baseline[url, workers]) / size
            finally:
                again.stop()
            if "ivf=" in url:
                print(f"  {label}: recall@1 ...", file=sys.stderr, flush=True)
                entry["recall_at_1"] = recall_at_1(url, vectors)
            if search_only:
                print(f"  {label}: in-process search cost ...", file=sys.stderr, flush=True)
                index = gallery_index(url, vectors)
                entry["search_ms_per_query"] = search_costs(index, dim, batches=batches)
                entry["concurrent_search"] = concurrent_searches(index, dim)
                del index
            results["indexes"][label] = entry
    return results


def empty_server_rss(bundle: Bundle, workdir: Path, url: str, workers: int) -> int:
    """The resident sets of a server whose gallery is empty (summed over its processes), after
    one identify request."""
    data_dir = workdir / "data-empty"
    if not data_dir.exists():
        service_bench.fill_gallery(data_dir, bundle, np.zeros((0, bundle.manifest.embedding_dim)))
    image = png_bytes(0, size=(112, 112), mode="RGB")
    shutil.rmtree(data_dir / "index", ignore_errors=True)
    server = start_server(data_dir, bundle, url, workers, workdir / "server.log", info=True)
    try:
        body, content_type = service_bench.multipart([image], {"top_k": str(TOP_K)})
        client = service_bench.RawClient(server.url)
        client.post(f"/v1/galleries/{GALLERY}/identify", body, content_type)
        client.close()
        assert server.process is not None
        return server_rss(server.process.pid, workers)
    finally:
        server.stop()


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; model {report['model']}; top_k {TOP_K}; one subject "
        "per template; single-image identify requests (multipart PNG, 112x112 RGB).",
        "",
        "| gallery | index | workers | UTC | clients | req/s | p50 ms | p99 ms "
        "| server CPU ms/req | client CPU ms/req | load avg | connections per worker |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size, result in report["sizes"].items():
        for entry in result["indexes"].values():
            for key, run in entry.items():
                if not key.endswith("clients"):
                    continue
                lines.append(
                    f"| {int(size):,} | `{entry['url']}` | {entry['workers']} | {entry['utc']} "
                    f"| {key.split()[0]} | {run['per_s']:.0f} "
                    f"| {run['p50_ms']:.1f} | {run['p99_ms']:.1f} "
                    f"| {run['server_cpu_ms_per_request']:.2f} "
                    f"| {run['client_cpu_ms_per_request']:.2f} | {run['load_average_1min']:.1f} "
                    f"| {'/'.join(map(str, run.get('connections_per_worker', []))) or '-'} |"
                )
    lines += [
        "",
        "| gallery | index | workers | start-up s | restart s | server RSS MB "
        "| bytes per template | after a restart | recall@1 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size, result in report["sizes"].items():
        for entry in result["indexes"].values():
            recall = entry.get("recall_at_1")
            recall_text = (
                ", ".join(f"{name} {value:.3f}" for name, value in recall.items())
                if recall
                else "exact"
            )
            lines.append(
                f"| {int(size):,} | `{entry['url']}` | {entry['workers']} "
                f"| {entry['startup_s']:.1f} | {entry['restart_s']:.1f} "
                f"| {entry['rss_mb']:.0f} | {entry['bytes_per_template']:.0f} "
                f"| {entry['restart_bytes_per_template']:.0f} | {recall_text} |"
            )
    costs = [
        (size, entry["url"], entry["search_ms_per_query"])
        for size, result in report["sizes"].items()
        for entry in result["indexes"].values()
        if "search_ms_per_query" in entry
    ]
    if costs:
        names = list(costs[0][2])
        lines += [
            "",
            "In-process search, ms per query (median): " + ", ".join(names),
            "",
            "| gallery | index | " + " | ".join(names) + " |",
            "| ---: | --- |" + " ---: |" * len(names),
        ]
        for size, url, cost in costs:
            cells = " | ".join(f"{cost[name]:.2f}" for name in names)
            lines.append(f"| {int(size):,} | `{url}` | {cells} |")
        lines += [
            "",
            "In-process searches from 8 threads at once, one query each (three rounds):",
            "",
            "| gallery | index | queries/s | p50 ms | p99 ms | queries per merged search |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for size, result in report["sizes"].items():
            for entry in result["indexes"].values():
                for run in entry.get("concurrent_search", []):
                    lines.append(
                        f"| {int(size):,} | `{entry['url']}` | {run['queries_per_s']:.0f} "
                        f"| {run['p50_ms']:.1f} | {run['p99_ms']:.1f} "
                        f"| {run['queries_per_search']:.1f} |"
                    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="gallery sizes (comma-separated)")
    parser.add_argument(
        "--index", action="append", help="index URL (repeatable; default faiss:// and sq8)"
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per run")
    parser.add_argument("--clients", default="1,8", help="client counts (comma-separated)")
    parser.add_argument(
        "--workers",
        default="1",
        help="serve --workers N for each index (comma-separated: each count is a run; "
        "more than 1 with storage=sq8 only)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every (index, workers) this many times, in turn"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--data",
        type=Path,
        help="keep the bundle and the filled galleries here and reuse them in later runs "
        "(a 1M gallery takes minutes to fill); default: a temporary directory",
    )
    parser.add_argument(
        "--search-costs",
        action="store_true",
        help="also time in-process search: 1 vs 8 queries per call, 1 vs 2 FAISS threads, "
        "and 8 concurrent callers",
    )
    parser.add_argument(
        "--batches", default="1,8", help="queries per call for --search-costs (comma-separated)"
    )
    args = parser.parse_args()
    urls = args.index or ["faiss://", "faiss://?storage=sq8"]
    clients = [int(c) for c in args.clients.split(",")]
    configs = [(url, int(w)) for url in urls for w in args.workers.split(",")]
    if any(w > 1 and "storage=sq8" not in url for url, w in configs):
        parser.error("--workers above 1 is measured with storage=sq8 only")
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="opengallery-scale-") as tmp:
        workdir = args.data or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bundle = (
            load_bundle(workdir / "bundle")
            if (workdir / "bundle" / "manifest.json").exists()
            else make_cheap_bundle(workdir / "bundle")
        )
        report["model"] = f"{bundle.model_id} (cheap network: 112x112 RGB -> 512-d)"
        baseline = {(url, w): empty_server_rss(bundle, workdir, url, w) for url, w in configs}
        report["empty_server_rss_mb"] = {
            f"{url} --workers {w}": rss / 2**20 for (url, w), rss in baseline.items()
        }
        for size in [int(s) for s in args.sizes.split(",")]:
            report["sizes"][size] = run_size(
                bundle,
                workdir,
                size,
                configs,
                args.requests,
                clients,
                baseline,
                args.search_costs,
                tuple(int(b) for b in args.batches.split(",")),
                args.rounds,
            )
            if args.out:
                args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the recognition service: identify over HTTP on loopback against the in-process
ceiling (onnxruntime + FAISS called directly, same process, same data), and enrolment.

    .venv/bin/python bench/service.py                       # gallery sizes 1k and 100k
    .venv/bin/python bench/service.py --sizes 1000,100000,1000000 --requests 1000
    .venv/bin/python bench/service.py --mixed --sizes 10000,100000   # identify + 10% enrolments
    .venv/bin/python bench/service.py --enrol-only --sizes 1000      # the enrolment table alone

The server runs as a separate process (`opengallery serve`) on a free loopback port; the
galleries are filled directly through the store (bulk import), then indexed by the server at
start like any restart. Probes are random PNGs and random unit embeddings. Results print as a
Markdown table (copy into docs/benchmarks.md) and, with --out, as JSON.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import Bundle, load_bundle  # noqa: E402
from service.core.calibration import default_fpir  # noqa: E402
from service.core.embedder import Embedder, check_embedding  # noqa: E402
from service.core.images import decode_image  # noqa: E402
from service.index import IndexContents, open_index  # noqa: E402
from service.storage import NewSample, open_store  # noqa: E402
from service.testing import ServerProcess, png_bytes  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
GALLERY = "bench"
TOP_K = 5
BATCH = 32


def summarise(latencies: list[float], count: int, wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "per_s": count / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_loop(call: Callable[[int], None], n: int) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - started


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def fill_gallery(data_dir: Path, bundle: Bundle, vectors: np.ndarray) -> float:
    started = time.perf_counter()
    store = open_store(f"sqlite:///{data_dir / 'opengallery.sqlite3'}")  # what serve opens
    try:
        fpir = default_fpir(0.01, len(bundle.load_calibration()))  # what the API would choose
        store.create_gallery(GALLERY, bundle.model_id, fpir, "max", True)
        chunk = 50_000
        for start in range(0, len(vectors), chunk):
            items = []
            for offset, vector in enumerate(vectors[start : start + chunk]):
                digest = hashlib.sha256(vector.tobytes()).hexdigest()
                items.append((f"s{start + offset:07d}", NewSample(digest, "embedding", vector)))
            store.bulk_enrol(GALLERY, bundle.model_id, items)
    finally:
        store.close()
    return time.perf_counter() - started


class RawClient:
    """A keep-alive HTTP/1.1 client with pre-encoded bodies: the lightest load generator the
    standard library offers, so that the client's own cost (it shares the machine with the
    server) distorts the server's figures as little as possible."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=600)

    def post(self, path: str, body: bytes, content_type: str, expect: int = 200) -> bytes:
        headers = {"X-API-Key": ADMIN_KEY, "Content-Type": content_type}
        self.connection.request("POST", path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != expect:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


def multipart(files: list[bytes], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "opengallerybench0123456789"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for number, data in enumerate(files):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{number}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def http_scenarios(
    url: str, server_pid: int, probes: dict, n: int, concurrency: int
) -> dict[str, dict]:
    path = f"/v1/galleries/{GALLERY}/identify"
    json_type = "application/json"
    embeddings = probes["embeddings"]
    bodies = {
        "embedding": [
            (json.dumps({"embeddings": [e], "top_k": TOP_K}).encode(), json_type)
            for e in embeddings
        ],
        "image": [multipart([image], {"top_k": str(TOP_K)}) for image in probes["images"]],
        "batch": [
            (
                json.dumps({"embeddings": embeddings[s : s + BATCH], "top_k": TOP_K}).encode(),
                json_type,
            )
            for s in range(0, len(embeddings) - BATCH + 1, BATCH)
        ],
    }

    def call(client: RawClient, kind: str, i: int) -> None:
        body, content_type = bodies[kind][i % len(bodies[kind])]
        client.post(path, body, content_type)

    results: dict[str, dict] = {}
    client = RawClient(url)
    try:
        call(client, "embedding", 0)  # warm-up: calibrates the threshold for this gallery
        call(client, "image", 0)
        for name, kind, count in (
            ("embedding x1", "embedding", n),
            ("image x1", "image", n),
            (f"embedding x{BATCH} per request", "batch", max(n // BATCH, 20)),
        ):
            cpu_before = process_cpu_seconds(server_pid)
            latencies, wall = timed_loop(lambda i, k=kind: call(client, k, i), count)
            summary = summarise(latencies, count, wall)
            # Server CPU per probe: steadier than wall time on a shared, loaded machine.
            probes_sent = count * (BATCH if kind == "batch" else 1)
            cpu = process_cpu_seconds(server_pid) - cpu_before
            summary["cpu_ms_per_probe"] = 1000 * cpu / probes_sent
            if kind == "batch":
                summary["per_s"] *= BATCH  # probes per second
            results[name] = summary
    finally:
        client.close()

    def concurrent(kind: str, name: str) -> None:
        per_worker = max(n // concurrency, 1)
        latencies: list[float] = []

        def worker(worker_id: int) -> list[float]:
            own = RawClient(url)
            try:
                return timed_loop(
                    lambda i: call(own, kind, worker_id * per_worker + i), per_worker
                )[0]
            finally:
                own.close()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for worker_latencies in pool.map(worker, range(concurrency)):
                latencies += worker_latencies
        results[name] = summarise(
            latencies, per_worker * concurrency, time.perf_counter() - started
        )

    concurrent("embedding", f"embedding x1, {concurrency} clients")
    concurrent("image", f"image x1, {concurrency} clients")
    return results


ENROL_EVERY = 10  # the mixed load: every 10th request of each client is an enrolment
ROUNDS = 3


def mixed_load(
    url: str, probes: dict, size: int, dim: int, n: int, clients: tuple[int, ...] = (1, 4)
) -> dict[str, dict]:
    """Identify alone against identify with 10% enrolments (one embedding added to an existing
    subject, which changes the gallery's vectors and so its calibration), at 1 and 4 clients;
    and the first identify after one enrolment against an identify after an identify."""
    identify_path = f"/v1/galleries/{GALLERY}/identify"
    json_type = "application/json"
    identify_bodies = [
        json.dumps({"embeddings": [e], "top_k": TOP_K}).encode() for e in probes["embeddings"]
    ]
    rng = np.random.default_rng(size)
    enrol_vectors = unit_vectors(rng, 4096, dim)
    enrol_subjects = rng.integers(0, size, len(enrol_vectors))
    counter = iter(range(10**9))

    enrol_latencies: list[float] = []

    def enrol(client: RawClient) -> None:
        i = next(counter) % len(enrol_vectors)
        body = json.dumps({"embeddings": [enrol_vectors[i].tolist()]}).encode()
        path = f"/v1/galleries/{GALLERY}/subjects/s{enrol_subjects[i]:07d}/samples"
        started = time.perf_counter()
        client.post(path, body, json_type, expect=201)
        enrol_latencies.append(time.perf_counter() - started)

    def identify(client: RawClient, i: int) -> float:
        started = time.perf_counter()
        client.post(identify_path, identify_bodies[i % len(identify_bodies)], json_type)
        return time.perf_counter() - started

    def run(workers: int, mixed: bool) -> dict[str, float]:
        per_worker = max(n // workers, ENROL_EVERY)

        def worker(worker_id: int) -> list[float]:
            own = RawClient(url)
            latencies = []
            try:
                for j in range(per_worker):
                    if mixed and j % ENROL_EVERY == ENROL_EVERY - 1:
                        enrol(own)
                    else:
                        latencies.append(identify(own, worker_id * per_worker + j))
            finally:
                own.close()
            return latencies

        started = time.perf_counter()
        latencies: list[float] = []
        with ThreadPoolExecutor(workers) as pool:
            for worker_latencies in pool.map(worker, range(workers)):
                latencies += worker_latencies
        wall = time.perf_counter() - started
        summary = summarise(latencies, per_worker * workers, wall)  # requests/s, all kinds
        return summary

    results: dict[str, dict] = {}
    warm = RawClient(url)
    try:
        for i in range(20):
            identify(warm, i)
        enrol(warm)
        identify(warm, 0)
        for workers in clients:
            # Alternated, several rounds, medians: the machine's load drifts between runs.
            rounds: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(ROUNDS):
                for mixed in (False, True):
                    rounds[mixed].append(run(workers, mixed))
            for mixed, name in ((False, "identify only"), (True, "identify + 10% enrolments")):
                results[f"{name}, {workers} client(s)"] = {
                    key: statistics.median(r[key] for r in rounds[mixed])
                    for key in rounds[mixed][0]
                }
    finally:
        warm.close()
    # The first identify after one enrolment against the identify just before it (on a new
    # connection: the server closes one left idle during the runs above).
    sequential = RawClient(url)
    enrol_latencies.clear()  # from here on: one client, nothing else running
    try:
        normal, after = [], []
        for i in range(max(n // 10, 50)):
            normal.append(identify(sequential, i))
            enrol(sequential)
            after.append(identify(sequential, i + 1))
        results["enrolment"] = {"p50_ms": 1000 * statistics.median(enrol_latencies)}
        results["first identify after one enrolment"] = {
            "normal_p50_ms": 1000 * statistics.median(normal),
            "after_p50_ms": 1000 * statistics.median(after),
            "normal_p99_ms": 1000 * sorted(normal)[int(0.99 * len(normal))],
            "after_p99_ms": 1000 * sorted(after)[int(0.99 * len(after))],
        }
    finally:
        sequential.close()
    return results


def calibration_update_cost(bundle: Bundle, vectors: np.ndarray, writes: int = 200) -> dict:
    """In process: what keeping the calibration current costs per write (no HTTP, no store)."""
    from service.core.calibration import GalleryCalibration
    from service.index.faiss import FaissSubjectIndex

    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    subjects = {int(i): f"s{int(i) - 1:07d}" for i in ids}
    index = FaissSubjectIndex.from_contents(
        vectors.shape[1], "max", IndexContents(ids, ids, vectors, subjects)
    )
    started = time.perf_counter()
    calibration = GalleryCalibration(index, bundle.load_calibration(), "bundle", warm_fpir=0.02)
    build = time.perf_counter() - started
    rng = np.random.default_rng(1)
    new = unit_vectors(rng, writes, vectors.shape[1])
    targets = rng.integers(1, len(vectors) + 1, writes)
    enrol_times, delete_times = [], []
    for number, (pk, vector) in enumerate(zip(targets.tolist(), new, strict=True)):
        sample_id = len(vectors) + 1 + number
        index.add_samples(pk, subjects[pk], np.array([sample_id]), vector[None, :])
        started = time.perf_counter()
        calibration.samples_added(subjects[pk], vector[None, :])
        enrol_times.append(time.perf_counter() - started)
    for number, pk in enumerate(targets.tolist()):
        index.remove_samples(np.array([len(vectors) + 1 + number]))
        started = time.perf_counter()
        calibration.samples_removed(subjects[pk])
        delete_times.append(time.perf_counter() - started)
    return {
        "calibration_size": calibration.size,
        "full_build_ms": 1000 * build,
        "enrol_update_ms": 1000 * statistics.median(enrol_times),
        "delete_update_ms": 1000 * statistics.median(delete_times),
    }


def mixed_markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; model {report['model']}; top_k {TOP_K}; one embedding "
        f"per identify; an enrolment adds one embedding to an existing subject. Each row: the "
        f"median of {ROUNDS} alternated rounds.",
        "",
        "| gallery | clients | identify-only req/s | mixed req/s | mixed / identify-only "
        "| identify p99 ms, identify-only | identify p99 ms, mixed | p99 mixed / only "
        "| load average |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        mixed = result["mixed"]
        for workers in (1, 4):
            only = mixed.get(f"identify only, {workers} client(s)")
            both = mixed.get(f"identify + 10% enrolments, {workers} client(s)")
            if not only or not both:
                continue
            lines.append(
                f"| {int(size):,} | {workers} | {only['per_s']:.0f} | {both['per_s']:.0f} "
                f"| {both['per_s'] / only['per_s']:.2f} | {only['p99_ms']:.2f} "
                f"| {both['p99_ms']:.2f} | {both['p99_ms'] / only['p99_ms']:.2f} "
                f"| {result['load_average_1min']:.1f} |"
            )
    lines += [
        "",
        "| gallery | identify p50 ms | first identify after one enrolment, p50 ms | ratio "
        "| identify p99 ms | after one enrolment, p99 ms | enrolment p50 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        first = result["mixed"]["first identify after one enrolment"]
        lines.append(
            f"| {int(size):,} | {first['normal_p50_ms']:.2f} | {first['after_p50_ms']:.2f} "
            f"| {first['after_p50_ms'] / first['normal_p50_ms']:.2f} "
            f"| {first['normal_p99_ms']:.2f} | {first['after_p99_ms']:.2f} "
            f"| {result['mixed']['enrolment']['p50_ms']:.2f} |"
        )
    lines += [
        "",
        "Keeping the calibration current, in process (no HTTP, no database), per write:",
        "",
        "| gallery | calibration searches | full calibration (start, swap) ms "
        "| enrolment update ms | sample deletion update ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        cost = result["calibration_update"]
        lines.append(
            f"| {int(size):,} | {cost['calibration_size']} | {cost['full_build_ms']:.1f} "
            f"| {cost['enrol_update_ms']:.3f} | {cost['delete_update_ms']:.3f} |"
        )
    return "\n".join(lines)


def in_process_ceiling(bundle: Bundle, vectors: np.ndarray, probes: dict, n: int) -> dict:
    """The same work without HTTP: decode + onnxruntime + FAISS, called directly."""
    dim = vectors.shape[1]
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    subjects = {int(i): f"s{int(i) - 1:07d}" for i in ids}
    # One search thread, as the server does by default (OPENGALLERY_SEARCH_THREADS).
    backend = open_index(None, search_threads=1)
    index = backend.build(dim, "max", IndexContents(ids, ids, vectors, subjects))
    embedder = Embedder(bundle, threads=1)
    limits = {"max_bytes": 16 << 20, "max_pixels": 25_000_000}

    def embedding(i: int) -> None:
        vector = check_embedding(probes["embeddings"][i % len(probes["embeddings"])], dim)
        index.search(vector[None, :], TOP_K)

    def image(i: int) -> None:
        decoded = decode_image(probes["images"][i % len(probes["images"])], **limits)
        index.search(embedder.embed_images([decoded]), TOP_K)

    def batch(i: int) -> None:
        start = (i * BATCH) % (len(probes["embeddings"]) - BATCH)
        rows = probes["embeddings"][start : start + BATCH]
        index.search(np.stack([check_embedding(row, dim) for row in rows]), TOP_K)

    embedding(0)
    image(0)
    results = {}
    for name, call, count in (
        ("embedding x1", embedding, n),
        ("image x1", image, n),
        (f"embedding x{BATCH} per request", batch, max(n // BATCH, 20)),
    ):
        cpu_before = time.process_time()
        latencies, wall = timed_loop(call, count)
        summary = summarise(latencies, count, wall)
        probes_done = count * (BATCH if "per request" in name else 1)
        summary["cpu_ms_per_probe"] = 1000 * (time.process_time() - cpu_before) / probes_done
        if "per request" in name:
            summary["per_s"] *= BATCH
        results[name] = summary
    return results


def enrolment(
    url: str, rng: np.random.Generator, dim: int, concurrency: int, bulk_requests: int = 8
) -> dict:
    headers = {"X-API-Key": ADMIN_KEY}
    results = {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        assert client.post("/v1/galleries", json={"name": "enrol"}).status_code == 201

    def run(name: str, subjects: int, make_request: Callable[[httpx.Client, str], int]) -> None:
        def worker(worker_id: int) -> int:
            done = 0
            with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
                for s in range(worker_id, subjects, concurrency):
                    subject = f"{name}-{s}"
                    assert client.put(f"/v1/galleries/enrol/subjects/{subject}").status_code == 201
                    done += make_request(client, subject)
            return done

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            total = sum(pool.map(worker, range(concurrency)))
        wall = time.perf_counter() - started
        results[name] = {"samples": total, "per_s": total / wall}

    def embeddings_request(client: httpx.Client, subject: str) -> int:
        body = {"embeddings": unit_vectors(rng, 64, dim).tolist()}
        response = client.post(f"/v1/galleries/enrol/subjects/{subject}/samples", json=body)
        assert response.status_code == 201, response.text
        return 64

    seeds = iter(range(10_000_000, 20_000_000))

    def images_request(client: httpx.Client, subject: str) -> int:
        files = [("images", (f"{i}.png", png_bytes(next(seeds)), "image/png")) for i in range(16)]
        response = client.post(f"/v1/galleries/enrol/subjects/{subject}/samples", files=files)
        assert response.status_code == 201, response.text
        return 16

    run("embeddings, 64 per request", 32, embeddings_request)
    run("images, 16 per request", 32, images_request)

    def bulk(name: str, bodies: list[bytes], per_request: int) -> None:
        """Bulk enrolment of bodies encoded before the clock starts, `concurrency` at once."""

        def worker(worker_id: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
                for body in bodies[worker_id::concurrency]:
                    response = client.post(
                        "/v1/galleries/enrol/samples",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    assert response.status_code == 201, response.text[:300]

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(worker, range(concurrency)))
        wall = time.perf_counter() - started
        results[name] = {
            "samples": len(bodies) * per_request,
            "per_s": len(bodies) * per_request / wall,
        }

    def bulk_body(items: list[dict]) -> bytes:
        return json.dumps({"items": items, "create_subjects": True}).encode()

    subject = iter(range(10_000_000))
    bulk(
        "bulk embeddings, 5000 per request",
        [
            bulk_body(
                [
                    {"subject_id": f"b{next(subject)}", "embedding": vector}
                    for vector in unit_vectors(rng, 5000, dim).tolist()
                ]
            )
            for _ in range(bulk_requests)
        ],
        5000,
    )
    bulk(
        "bulk images, 500 per request",
        [
            bulk_body(
                [
                    {
                        "subject_id": f"b{next(subject)}",
                        "image": base64.b64encode(png_bytes(next(seeds))).decode("ascii"),
                    }
                    for _ in range(500)
                ]
            )
            for _ in range(max(1, bulk_requests * 3 // 4))
        ],
        500,
    )
    return results


def resolve_bundle(args: argparse.Namespace, workdir: Path) -> Bundle:
    if args.model:
        return load_bundle(args.model)
    default = ROOT / "models" / "default"
    if default.is_dir() and not args.random_bundle:
        return load_bundle(default)
    from models.testing import make_random_bundle  # needs onnx (dev/train install)

    return make_random_bundle(
        workdir / "bundle", seed=0, embedding_dim=args.embedding_dim, name="bench", version="1"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000", help="gallery sizes (comma-separated)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the concurrent runs")
    parser.add_argument("--model", type=Path, help="bundle (default: models/default or random)")
    parser.add_argument("--random-bundle", action="store_true", help="ignore models/default")
    parser.add_argument("--embedding-dim", type=int, default=64, help="of the random bundle")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="only the mixed load: identify alone and with 10%% enrolments, 1 and 4 clients",
    )
    parser.add_argument(
        "--enrol-only",
        action="store_true",
        help="only the enrolment table (one gallery size, no identify scenarios or ceiling)",
    )
    parser.add_argument(
        "--bulk-requests",
        type=int,
        default=8,
        help="bulk embedding requests of 5000 in the enrolment table (3/4 as many of 500 images)",
    )
    parser.add_argument(
        "--batching",
        action="store_true",
        help="also compare dynamic batching off/on at 1, 8 and 32 clients (bench/batching.py; "
        "OPENGALLERY_BATCH_MAX_SIZE/_MAX_WAIT_MS from the environment)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "concurrency": args.concurrency,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="opengallery-bench-") as tmp:
        workdir = Path(tmp)
        bundle = resolve_bundle(args, workdir)
        dim = bundle.manifest.embedding_dim
        report["model"] = (
            f"{bundle.model_id} (dim {dim}, input {list(bundle.manifest.input.shape)})"
        )
        height, width = bundle.manifest.input.shape[1:]
        mode = "L" if bundle.manifest.input.color == "L" else "RGB"
        probes = {
            "embeddings": unit_vectors(rng, 512, dim).tolist(),
            "images": [png_bytes(seed, size=(width, height), mode=mode) for seed in range(64)],
        }
        for size in [int(s) for s in args.sizes.split(",")]:
            print(f"gallery size {size}: filling ...", file=sys.stderr, flush=True)
            vectors = unit_vectors(rng, size, dim)
            data_dir = workdir / f"data-{size}"
            fill_seconds = fill_gallery(data_dir, bundle, vectors)
            load = os.getloadavg()[0]
            started = time.perf_counter()
            server = ServerProcess(data_dir, bundle.path, admin_key=ADMIN_KEY).start(timeout=900)
            startup = time.perf_counter() - started
            try:
                print(f"  server ready in {startup:.1f}s; HTTP ...", file=sys.stderr, flush=True)
                assert server.process is not None
                pid = server.process.pid
                if args.mixed:
                    mixed = mixed_load(server.url, probes, size, dim, args.requests)
                    report["sizes"][size] = {
                        "load_average_1min": load,
                        "load_average_1min_after": os.getloadavg()[0],
                        "mixed": mixed,
                        "calibration_update": calibration_update_cost(bundle, vectors),
                    }
                    continue
                if args.enrol_only:
                    enrol = enrolment(server.url, rng, dim, args.concurrency, args.bulk_requests)
                    report["sizes"][size] = {
                        "load_average_1min": load,
                        "load_average_1min_after": os.getloadavg()[0],
                        "enrolment": enrol,
                    }
                    break
                http = http_scenarios(server.url, pid, probes, args.requests, args.concurrency)
                enrol = (
                    enrolment(server.url, rng, dim, args.concurrency, args.bulk_requests)
                    if size == 1000
                    else {}
                )
            finally:
                server.stop()
            print("  in-process ceiling ...", file=sys.stderr, flush=True)
            ceiling = in_process_ceiling(bundle, vectors, probes, args.requests)
            report["sizes"][size] = {
                "load_average_1min": load,
                "fill_s": fill_seconds,
                "startup_s": startup,
                "http": http,
                "ceiling": ceiling,
                "enrolment": enrol,
            }
        if args.batching:
            print("dynamic batching off/on ...", file=sys.stderr, flush=True)
            batching = _bench_batching()
            overrides = {k: v for k, v in os.environ.items() if k.startswith("OPENGALLERY_BATCH_")}
            report["batching"] = batching.compare(
                [bundle], clients=[1, 8, 32], requests=400, rounds=3, env=overrides
            )
    print(
        mixed_markdown(report)
        if args.mixed
        else enrolment_markdown(report)
        if args.enrol_only
        else markdown(report)
    )
    if "batching" in report:
        print("\nDynamic batching:\n\n" + batching.markdown(report["batching"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def _bench_batching():  # type: ignore[no-untyped-def]
    """bench/batching.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_batching", ROOT / "bench" / "batching.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; model {report['model']}; top_k {TOP_K}.",
        "",
        "Wall-clock figures (both processes share the machine with everything else on it):",
        "",
        "| gallery | scenario | HTTP probes/s | HTTP p50 ms | HTTP p99 ms "
        "| in-process probes/s | in-process p50 ms | HTTP / ceiling |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        for name, over_http in result["http"].items():
            ceiling = result["ceiling"].get(name.split(",")[0])
            cells = [
                f"{int(size):,}",
                name,
                f"{over_http['per_s']:.0f}",
                f"{over_http['p50_ms']:.2f}",
                f"{over_http['p99_ms']:.2f}",
                f"{ceiling['per_s']:.0f}" if ceiling else "-",
                f"{ceiling['p50_ms']:.3f}" if ceiling else "-",
                f"{over_http['per_s'] / ceiling['per_s']:.2f}" if ceiling else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU time per probe (server process for HTTP, this process for the ceiling); the ratio "
        "is the share of the in-process capacity that HTTP keeps per core:",
        "",
        "| gallery | scenario | HTTP server CPU ms/probe | in-process CPU ms/probe "
        "| ceiling / HTTP |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        for name, over_http in result["http"].items():
            ceiling = result["ceiling"].get(name)
            if "cpu_ms_per_probe" not in over_http or not ceiling:
                continue
            http_cpu, direct_cpu = over_http["cpu_ms_per_probe"], ceiling["cpu_ms_per_probe"]
            lines.append(
                f"| {int(size):,} | {name} | {http_cpu:.3f} | {direct_cpu:.3f} "
                f"| {direct_cpu / http_cpu:.2f} |"
            )
    lines += [
        "",
        "| gallery | bulk import s | server start (index build) s | load average at start |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for size, result in report["sizes"].items():
        lines.append(
            f"| {int(size):,} | {result['fill_s']:.1f} | {result['startup_s']:.1f} "
            f"| {result['load_average_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n\n" + enrolment_markdown(report)


def enrolment_markdown(report: dict) -> str:
    lines = [
        f"| enrolment over HTTP ({report.get('concurrency', 4)} clients) | samples | samples/s |",
        "| --- | ---: | ---: |",
    ]
    for result in report["sizes"].values():
        for name, enrol in result["enrolment"].items():
            lines.append(f"| {name} | {enrol['samples']} | {enrol['per_s']:.0f} |")
        if "load_average_1min_after" in result:
            lines.append(
                f"\nLoad average (1 min) {result['load_average_1min']:.2f} before, "
                f"{result['load_average_1min_after']:.2f} after."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

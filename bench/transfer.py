"""Benchmark of gallery export and import over HTTP: archive size and wall time per gallery size.

    .venv/bin/python bench/transfer.py                      # 10k and 100k samples
    .venv/bin/python bench/transfer.py --sizes 1000,10000 --images

Fills a gallery of the shipped model directly through the store (one embedding per subject;
with --images, each sample also keeps a 28x28 PNG), starts `opengallery serve` on a free
loopback port, then times `Client.export_gallery` to a file and `Client.import_gallery` of that
file under a new name, and checks that both galleries answer 32 probes identically.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.bundle import load_bundle  # noqa: E402
from opengallery.client import Client  # noqa: E402
from service.core.calibration import default_fpir  # noqa: E402
from service.storage import NewSample, open_store  # noqa: E402
from service.testing import ServerProcess, png_bytes  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
MODEL = ROOT / "models" / "default"


def fill(data_dir: Path, size: int, images: bool) -> None:
    bundle = load_bundle(MODEL)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((size, bundle.manifest.embedding_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_store(f"sqlite:///{data_dir / 'opengallery.sqlite3'}")
    try:
        fpir = default_fpir(0.01, len(bundle.load_calibration()))
        store.create_gallery("bench", bundle.model_id, fpir, "max", True)
        items = []
        for number, vector in enumerate(vectors):
            image = png_bytes(number) if images else None
            digest = hashlib.sha256(image if image else vector.tobytes()).hexdigest()
            source = "image" if image else "embedding"
            items.append((f"s{number:07d}", NewSample(digest, source, vector, image)))
        store.bulk_enrol("bench", bundle.model_id, items)
    finally:
        store.close()


def run(size: int, images: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as work:
        data = Path(work) / "data"
        data.mkdir()
        fill(data, size, images)
        env = {"OPENGALLERY_MAX_REQUEST_BYTES": str(1 << 30)}
        with (
            ServerProcess(data, MODEL, admin_key=ADMIN_KEY, env=env) as server,
            Client(server.url, ADMIN_KEY, timeout=600) as client,
        ):
            archive = Path(work) / "bench.tar"
            started = time.perf_counter()
            client.export_gallery("bench", archive)
            exported = time.perf_counter() - started
            started = time.perf_counter()
            client.import_gallery(archive, "copy")
            imported = time.perf_counter() - started
            probes = np.random.default_rng(1).standard_normal((32, 32))
            original = client.identify("bench", embeddings=probes)
            copy = client.identify("copy", embeddings=probes)
            if [r.candidates for r in original.results] != [r.candidates for r in copy.results]:
                raise SystemExit("the imported gallery answers differently")
            return {"mib": archive.stat().st_size / 2**20, "export": exported, "import": imported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="samples per gallery")
    parser.add_argument("--images", action="store_true", help="samples keep a PNG each")
    args = parser.parse_args()
    print("| samples | images | archive MiB | export s | import s |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for size in (int(s) for s in args.sizes.split(",")):
        result = run(size, args.images)
        print(
            f"| {size} | {'yes' if args.images else 'no'} | {result['mib']:.1f} "
            f"| {result['export']:.2f} | {result['import']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

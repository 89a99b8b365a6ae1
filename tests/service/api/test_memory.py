"""Memory per request: large, well-compressed images must not grow the server (a real process).

A functional limit, not a timing test: the server's resident memory is read from /proc.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.testing import ServerProcess

from ..conftest import ADMIN_KEY

MiB = 1024 * 1024
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def compressible_png(seed: int, side: int = 5000) -> bytes:
    """side x side grey pixels, every row the same random row: a small file, many pixels."""
    row = np.random.default_rng(seed).integers(0, 256, side, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (side, side)).copy()).save(buffer, format="PNG")
    return buffer.getvalue()


def memory(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


@pytest.mark.parametrize("request_limit", [None, 1_000_000_000])
def test_32_images_of_25_megapixels_keep_the_server_under_300_mib(
    tmp_path: Path, bundle_path: Path, request_limit: int | None
) -> None:
    image = compressible_png(0)
    assert len(image) < 150_000
    env = {} if request_limit is None else {"OPENGALLERY_MAX_REQUEST_PIXELS": str(request_limit)}
    server = ServerProcess(tmp_path / "data", bundle_path, admin_key=ADMIN_KEY, env=env)
    with (
        server,
        httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}, timeout=300) as client,
    ):
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        assert client.put("/v1/galleries/g/subjects/a").status_code == 201
        small = compressible_png(1, side=64)
        enrol = client.post(
            "/v1/galleries/g/subjects/a/samples", files=[("images", ("a.png", small, "image/png"))]
        )
        assert enrol.status_code == 201, enrol.text
        assert server.process is not None
        before, _ = memory(server.process.pid)
        files = [("images", (f"{n}.png", image, "image/png")) for n in range(32)]
        response = client.post("/v1/galleries/g/identify", files=files)
        after, peak = memory(server.process.pid)
    if request_limit is None:  # the default limit refuses it from the headers alone
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "too_many_pixels"
    else:  # decoded one image at a time
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 32
    assert peak - before < 300 * MiB, f"peak {peak / MiB:.0f} MiB from {before / MiB:.0f} MiB"
    assert after - before < 100 * MiB, f"kept {after / MiB:.0f} MiB from {before / MiB:.0f} MiB"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale() -> None:
    from service.core.images import decode_image

    pixels = np.random.default_rng(0).integers(0, 256, (4000, 4000), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    image = decode_image(
        buffer.getvalue(), max_bytes=64 * MiB, max_pixels=25_000_000, draft=("L", (28, 28))
    )
    assert image.size == (500, 500)  # 1/8, the smallest scale JPEG offers, still >= 28x28

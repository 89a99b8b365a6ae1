"""Image probes (Ingest.probe_vectors) embedded exactly as enrolment's prepare() embeds the
same images, without what only enrolment keeps; an unusable probe is named as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.testing import make_cheap_bundle
from service.core.batching import BatchingEmbedder
from service.core.embedder import Embedder
from service.core.errors import ServiceError
from service.core.ingest import Ingest, Upload
from service.core.models import LoadedModel, LoadedModels
from service.settings import Settings
from service.testing import png_bytes


def encoded(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


def probe_images() -> list[bytes]:
    """PNG and JPEG, RGB, grey and RGBA, at and away from the models' input sizes."""
    rng = np.random.default_rng(4)
    rgb = Image.fromarray(rng.integers(0, 256, size=(150, 130, 3), dtype=np.uint8))
    return [
        png_bytes(1, size=(112, 112), mode="RGB"),
        png_bytes(2, size=(28, 28), mode="L"),
        encoded(rgb, "JPEG"),
        encoded(rgb.convert("RGBA"), "PNG"),
        encoded(rgb.convert("L"), "PNG"),
    ]


@pytest.fixture(params=["grey 28x28", "rgb 112x112"])
def model(request: pytest.FixtureRequest, bundle_path: Path, tmp_path: Path) -> LoadedModel:
    path = bundle_path if request.param == "grey 28x28" else make_cheap_bundle(tmp_path / "c").path
    return LoadedModels(threads=1).load(path)


def test_image_probes_equal_the_prepared_vectors(model: LoadedModel) -> None:
    ingest = Ingest(Settings())
    uploads = [Upload(image=data) for data in probe_images()]
    prepared = ingest.prepare(model, uploads)
    expected = np.stack([item.vector for item in prepared if item.vector is not None])
    assert len(expected) == len(uploads)
    together = ingest.probe_vectors(model, uploads)
    assert together.dtype == np.float32
    np.testing.assert_array_equal(together, expected)
    alone = np.vstack([ingest.probe_vectors(model, [upload]) for upload in uploads])
    np.testing.assert_array_equal(alone, expected)


def test_an_unusable_image_probe_is_named_as_prepare_names_it(model: LoadedModel) -> None:
    ingest = Ingest(Settings())
    good = Upload(image=png_bytes(1, size=(112, 112), mode="RGB"))
    blank = Upload(image=encoded(Image.new("RGB", (40, 40), (9, 9, 9)), "PNG"))
    broken = Upload(image=b"\x89PNG\r\n\x1a\n not a png")
    for uploads, code, probe in (
        ([good, blank, good], "blank_image", 1),
        ([good, good, broken], "invalid_image", 2),
    ):
        with pytest.raises(ServiceError) as raised:
            ingest.probe_vectors(model, uploads)
        assert raised.value.code == code
        assert raised.value.message.startswith(f"probe {probe}: ")


def test_image_probes_over_the_request_pixel_limit_are_refused(model: LoadedModel) -> None:
    ingest = Ingest(Settings(max_request_pixels=112 * 112 * 2 - 1))
    uploads = [Upload(image=png_bytes(s, size=(112, 112), mode="RGB")) for s in range(2)]
    with pytest.raises(ServiceError) as raised:
        ingest.probe_vectors(model, uploads)
    assert raised.value.code == "too_many_pixels"
    assert ingest.probe_vectors(model, uploads[:1]).shape == (1, model.dim)


def test_pixels_embed_as_their_images_do_with_and_without_dynamic_batching(
    bundle_path: Path,
) -> None:
    model = LoadedModels(threads=1).load(bundle_path)
    spec = model.bundle.manifest.input
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(5, spec.height, spec.width), dtype=np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    plain = Embedder(model.bundle, threads=1, batch_size=2)  # three chunks
    batching = BatchingEmbedder(model.bundle, threads=1, max_batch_size=8)
    try:
        expected = plain.embed_images(images)
        np.testing.assert_array_equal(plain.embed_pixels(pixels), expected)
        np.testing.assert_array_equal(batching.embed_pixels(pixels), expected)
        np.testing.assert_array_equal(batching.embed_images(images), expected)
        assert plain.embed_pixels(pixels[:0]).shape == (0, model.dim)
    finally:
        batching.close()

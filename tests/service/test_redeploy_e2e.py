"""Retrain -> export -> push -> migrate, end to end, as docs/redeploy.md tells a user to.

A service (a subprocess) holds a gallery enrolled from images with one bundle; a tiny network
is trained for a few steps and exported with the training commands; `opengallery push`
registers the export with the running service and migrates the gallery; afterwards answers
name the new model and are that network's answers (checked against onnxruntime run directly
on the exported file).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.bundle import Bundle, load_bundle
from models.preprocessing import images_to_array
from service.testing import ServerProcess, png_bytes

from .conftest import ADMIN_KEY
from .redeploy import enrol_images, enrolled_images, expected_top, identify_images

pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")


def onnx_embeddings(bundle: Bundle, images: list[bytes]) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        str(bundle.onnx_path), providers=["CPUExecutionProvider"]
    )
    inputs = images_to_array([Image.open(BytesIO(b)) for b in images], bundle.manifest.input)
    (output,) = session.run([bundle.manifest.output], {"input": inputs})
    return output / np.linalg.norm(output, axis=1, keepdims=True)


def onnx_top(bundle: Bundle, enrolled: dict[str, list[bytes]], probes: list[bytes]) -> list[str]:
    probe_vectors = onnx_embeddings(bundle, probes)
    scores = np.stack(
        [(onnx_embeddings(bundle, enrolled[s]) @ probe_vectors.T).max(0) for s in enrolled]
    )
    return [list(enrolled)[i] for i in scores.argmax(axis=0)]


def test_retrain_export_push_migrate(
    tmp_path: Path, bundle_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opengallery.push import main as push_main
    from training.cli import export_main, train_main

    images = enrolled_images(6, 3)
    probes = [png_bytes(70_000 + seed) for seed in range(40)]
    old = load_bundle(bundle_path)
    with ServerProcess(
        tmp_path / "data", bundle_path, admin_key=ADMIN_KEY, log_path=tmp_path / "server.log"
    ) as server:
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}, timeout=60)
        # fpir 0.1: the tiny export's calibration set is too small for the default 0.01.
        assert client.post("/v1/galleries", json={"name": "g", "fpir": 0.1}).status_code == 201
        enrol_images(client, "g", images)
        before = identify_images(client, "g", probes).json()
        assert before["model"] == "random@1"
        old_top, _ = expected_top(old, images, probes)
        assert [r["candidates"][0]["subject_id"] for r in before["results"]] == old_top

        # Retrain (a few steps) and export, with the training commands.
        run, exported = tmp_path / "run", tmp_path / "bundle"
        train_args = ["--protocol", "mnist5k", "--loss", "mel", "--width", "4"]
        train_args += ["--embedding-dim", "8", "--epochs", "1", "--batch-size", "16"]
        train_args += ["--max-steps", "3", "--seed", "1", "--no-progress", "--out", str(run)]
        assert train_main(train_args) == 0
        assert export_main([str(run), "--out", str(exported), "--version", "2"]) == 0
        new = load_bundle(exported)
        capsys.readouterr()

        # Push it to the running service and migrate the gallery.
        push = [str(exported), "--url", server.url, "--api-key", ADMIN_KEY]
        code = push_main([*push, "--migrate", "g", "--no-progress"])
        output = capsys.readouterr()
        assert code == 0, output.err
        assert output.out.strip() == new.manifest.model_id
        assert f"now answers with {new.manifest.model_id}" in output.err

        after = identify_images(client, "g", probes).json()
        assert after["model"] == new.manifest.model_id
        new_top = onnx_top(new, images, probes)
        assert [r["candidates"][0]["subject_id"] for r in after["results"]] == new_top
        assert new_top != old_top  # the answers really changed with the network
        # An enrolled image is found again by the new network, with score 1.
        exact = identify_images(client, "g", [images["s4"][2]]).json()["results"][0]
        assert exact["candidates"][0]["subject_id"] == "s4"
        assert exact["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        models = {m["model"]: m["galleries"] for m in client.get("/v1/models").json()["models"]}
        assert models == {"random@1": [], new.manifest.model_id: ["g"]}

        # Pushing the same export again is harmless; a broken one is refused before sending.
        assert push_main(push) == 0
        (exported / "calibration.npz").unlink()
        assert push_main(push) == 2
        assert "not a valid bundle" in capsys.readouterr().err
        client.close()

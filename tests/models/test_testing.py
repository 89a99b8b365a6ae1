from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from models.bundle import load_bundle
from models.preprocessing import pixels_to_array
from models.testing import (
    make_cheap_bundle,
    make_random_bundle,
    random_bundle_weights,
    random_embeddings,
)


def run(path: Path, inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["embedding"], {"input": inputs})
    return output


def test_random_bundle_follows_the_graph_contract(tmp_path: Path) -> None:
    bundle = make_random_bundle(tmp_path / "b", seed=5, calibration_size=20)
    assert load_bundle(tmp_path / "b") == bundle
    assert bundle.manifest.model_id == "random@1"
    graph = onnx.load(bundle.onnx_path).graph
    assert [i.name for i in graph.input] == ["input"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch axis
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert [o.name for o in graph.output] == ["embedding"]
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        inputs = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        out = run(bundle.onnx_path, inputs)
        assert out.shape == (batch, 16) and out.dtype == np.float32
        np.testing.assert_allclose(out, random_embeddings(inputs, seed=5), atol=1e-5)
    assert bundle.manifest.parity_max_abs_diff < 1e-5
    calibration = bundle.load_calibration()
    assert calibration.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(calibration, axis=1), 1.0, atol=1e-6)


def test_seeds_give_different_networks(tmp_path: Path) -> None:
    a = make_random_bundle(tmp_path / "a", seed=0, calibration_size=10)
    b = make_random_bundle(tmp_path / "b", seed=1, calibration_size=10, version="2")
    assert a.manifest.onnx_sha256 != b.manifest.onnx_sha256
    pixels = np.random.default_rng(1).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    inputs = pixels_to_array(pixels, a.manifest.input)
    ea, eb = run(a.onnx_path, inputs), run(b.onnx_path, inputs)
    ea /= np.linalg.norm(ea, axis=1, keepdims=True)
    eb /= np.linalg.norm(eb, axis=1, keepdims=True)
    # Same images, different networks: the embeddings are not the same directions.
    assert np.abs(np.sum(ea * eb, axis=1)).mean() < 0.5
    # ...and neighbours differ: the gallery order of the two models disagrees.
    assert not np.array_equal(np.argsort(ea @ ea.T, axis=1), np.argsort(eb @ eb.T, axis=1))


def test_same_seed_is_reproducible(tmp_path: Path) -> None:
    a = make_random_bundle(tmp_path / "a", seed=4, calibration_size=10)
    b = make_random_bundle(tmp_path / "b", seed=4, calibration_size=10)
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    np.testing.assert_array_equal(a.load_calibration(), b.load_calibration())


def test_rgb_bundle(tmp_path: Path) -> None:
    bundle = make_random_bundle(
        tmp_path / "rgb", input_shape=(3, 16, 12), embedding_dim=8, name="rgb", version="0.1"
    )
    assert bundle.manifest.input.color == "RGB"
    assert bundle.manifest.model_id == "rgb@0.1"
    out = run(bundle.onnx_path, np.zeros((2, 3, 16, 12), dtype=np.float32) + 1)
    assert out.shape == (2, 8)
    assert bundle.load_calibration().shape == (2000, 8)


def test_existing_directory_is_refused(tmp_path: Path) -> None:
    make_random_bundle(tmp_path / "b", calibration_size=5)
    with pytest.raises(ValueError, match="already exists"):
        make_random_bundle(tmp_path / "b", calibration_size=5)


def test_cheap_bundle_is_112x112_rgb_to_512_and_matches_numpy(tmp_path: Path) -> None:
    bundle = make_cheap_bundle(tmp_path / "cheap", seed=3, calibration_size=8)
    assert bundle.manifest.input.shape == (3, 112, 112)
    assert bundle.manifest.input.color == "RGB"
    assert bundle.manifest.embedding_dim == 512
    ops = [node.op_type for node in onnx.load(bundle.onnx_path).graph.node]
    assert ops == ["AveragePool", "Flatten", "MatMul"]
    inputs = np.random.default_rng(2).standard_normal((3, 3, 112, 112)).astype(np.float32)
    out = run(bundle.onnx_path, inputs)
    assert out.shape == (3, 512)
    # The numpy reference by hand: the mean of each 14x14 block, then the seed's weights.
    blocks = inputs.reshape(3, 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(3, 192)
    np.testing.assert_allclose(
        out, blocks @ random_bundle_weights(3, 512, (3, 112, 112), 14), atol=1e-4
    )
    np.testing.assert_allclose(
        out, random_embeddings(inputs, seed=3, embedding_dim=512, pool=14), atol=1e-4
    )
    assert bundle.manifest.parity_max_abs_diff < 1e-4


def test_pool_must_divide_the_input() -> None:
    with pytest.raises(ValueError, match="divide"):
        random_bundle_weights(0, 8, (1, 28, 28), pool=5)

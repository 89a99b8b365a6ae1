"""Test utility: small random bundles, without torch.

``make_random_bundle`` writes a valid bundle whose network is ``Flatten`` + ``MatMul`` with
fixed random weights (input ``"input"`` float32 [N, C, H, W] with a dynamic N, output
``"embedding"`` [N, D]), optionally after an average pooling of ``pool`` x ``pool`` pixels.
``make_cheap_bundle`` is the benchmarks' "512-d, cheap network": 112x112 RGB in, 512-d out,
pooled 14x14 first so that the network costs almost nothing and search and HTTP dominate.
Different seeds give different weights, hence genuinely different embeddings. It needs the
``onnx`` package (train/dev extras, not the service extra), imported only when called,
so ``models`` stays importable without it. Not for production bundles.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np

from models.bundle import Bundle, InputSpec, Manifest, write_bundle
from models.preprocessing import pixels_to_array

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
_OPSET = 17
_IR_VERSION = 8  # old enough for any onnxruntime >= 1.14


def _pooled_shape(input_shape: tuple[int, ...], pool: int) -> tuple[int, int, int]:
    channels, height, width = input_shape
    if pool < 1 or height % pool or width % pool:
        raise ValueError(f"pool must be >= 1 and divide {height}x{width}, got {pool}")
    return channels, height // pool, width // pool


def random_bundle_weights(
    seed: int = 0,
    embedding_dim: int = 16,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    pool: int = 1,
) -> np.ndarray:
    """The weight matrix [C*(H/pool)*(W/pool), D] of ``make_random_bundle(seed=...)``'s
    network."""
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(_pooled_shape(input_shape, pool)))
    weights = rng.standard_normal((fan_in, embedding_dim)) / np.sqrt(fan_in)
    return weights.astype(np.float32)


def random_input_spec(input_shape: tuple[int, int, int] = (1, 28, 28)) -> InputSpec:
    channels = input_shape[0]
    return InputSpec(
        shape=input_shape,
        dtype="float32",
        color="L" if channels == 1 else "RGB",
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        resize="bilinear",
    )


def random_embeddings(
    inputs: np.ndarray,
    *,
    seed: int = 0,
    embedding_dim: int = 16,
    pool: int = 1,
) -> np.ndarray:
    """What the random network of ``seed`` returns for float32 inputs [N, C, H, W] (numpy)."""
    inputs = np.asarray(inputs, dtype=np.float32)
    weights = random_bundle_weights(seed, embedding_dim, tuple(inputs.shape[1:]), pool)
    n, channels, height, width = inputs.shape
    channels, rows, cols = _pooled_shape((channels, height, width), pool)
    pooled = inputs.reshape(n, channels, rows, pool, cols, pool).mean(axis=(3, 5))
    return pooled.reshape(n, -1) @ weights


def random_onnx_model_bytes(
    seed: int = 0,
    embedding_dim: int = 16,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    pool: int = 1,
) -> bytes:
    """The serialised ONNX model: [AveragePool(pool)], Flatten(axis=1), then MatMul with the
    seed's weights."""
    import onnx  # a test/train dependency, not a service one
    from onnx import TensorProto, helper, numpy_helper

    weights = random_bundle_weights(seed, embedding_dim, input_shape, pool)
    nodes = [helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1)]
    if pool > 1:
        nodes = [
            helper.make_node(
                "AveragePool",
                [INPUT_NAME],
                ["pooled"],
                kernel_shape=[pool, pool],
                strides=[pool, pool],
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        ]
    graph = helper.make_graph(
        nodes=[*nodes, helper.make_node("MatMul", ["flat", "weights"], [OUTPUT_NAME])],
        name=f"random_seed{seed}",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *input_shape])],
        outputs=[
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", embedding_dim])
        ],
        initializer=[numpy_helper.from_array(weights, name="weights")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="opengallery.models.testing",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_random_bundle(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    embedding_dim: int = 16,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    name: str = "random",
    version: str = "1",
    calibration_size: int = 2000,
    pool: int = 1,
) -> Bundle:
    """Write a bundle with a random linear network to ``out_dir`` and return it loaded.

    The calibration set is the network's embeddings of ``calibration_size`` random uint8
    images (seeded), so it lives in the same space as real probes of this network. The
    manifest's calibration table is empty (there is no gallery to calibrate against) and
    ``parity_max_abs_diff`` compares onnxruntime with :func:`random_embeddings` when
    onnxruntime is installed (0.0 and ``extra.parity = "not measured"`` otherwise).
    """
    input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
    spec = random_input_spec(input_shape)
    model_bytes = random_onnx_model_bytes(seed, embedding_dim, input_shape, pool)
    rng = np.random.default_rng([seed, 1])
    pixel_shape = (calibration_size, spec.height, spec.width, spec.channels)
    pixels = rng.integers(0, 256, size=pixel_shape, dtype=np.uint8)
    inputs = pixels_to_array(pixels, spec)
    calibration = random_embeddings(inputs, seed=seed, embedding_dim=embedding_dim, pool=pool)
    parity, extra = _parity(model_bytes, inputs[:64], calibration[:64])
    manifest = Manifest(
        name=name,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        embedding_dim=embedding_dim,
        input=spec,
        output=OUTPUT_NAME,
        metric="cosine",
        loss="none (random weights)",
        protocol={"name": "none", "known": [], "negative": [], "unknown": []},
        metrics={},
        calibration=[],
        onnx_sha256="",
        parity_max_abs_diff=parity,
        extra={"seed": seed, "pool": pool, **extra},
    )
    return write_bundle(out_dir, manifest, model_bytes, calibration)


CHEAP_INPUT_SHAPE = (3, 112, 112)
CHEAP_EMBEDDING_DIM = 512
CHEAP_POOL = 14


def make_cheap_bundle(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    name: str = "cheap512",
    version: str = "1",
    calibration_size: int = 2000,
) -> Bundle:
    """The "512-d, cheap network" of the benchmarks: 112x112 RGB in, 512-d out, 14x14 average
    pooling then one MatMul (about 0.1 M multiply-adds per image), so that a request's cost is
    search and HTTP, as with a face network on an accelerator."""
    return make_random_bundle(
        out_dir,
        seed=seed,
        embedding_dim=CHEAP_EMBEDDING_DIM,
        input_shape=CHEAP_INPUT_SHAPE,
        name=name,
        version=version,
        calibration_size=calibration_size,
        pool=CHEAP_POOL,
    )


def _parity(model_bytes: bytes, inputs: np.ndarray, expected: np.ndarray) -> tuple[float, dict]:
    try:
        import onnxruntime
    except ImportError:
        return 0.0, {"parity": "not measured"}
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (output,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
    return float(np.max(np.abs(output - expected))), {}

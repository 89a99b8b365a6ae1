import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.augment import AugmentParams, _affine, augment, step_generator
from training.config import ConfigError, TrainConfig
from training.data import ProtocolData
from training.trainer import load_checkpoint, train


def _batch(n: int = 6, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, channels, size, size), generator=torch.Generator().manual_seed(seed))


def _only(**values: float | str) -> AugmentParams:
    """Every transform off except ``values``."""
    return AugmentParams(**{**AugmentParams.identity().__dict__, **values})


def test_off_is_identity_bit_for_bit() -> None:
    x = _batch(channels=3)
    out = augment(x, AugmentParams.identity(), step_generator(0, 0, 0))
    assert torch.equal(out, x) and out is not x


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_value_range(channels: int) -> None:
    strong = AugmentParams(
        rotation=180, shear=45, scale=0.9, shift=0.5, crop=0.5, brightness=1, contrast=1,
        saturation=1, blur=1, blur_sigma=5, noise=0.5,
    )  # fmt: skip
    x = _batch(n=5, channels=channels, size=20)
    out = augment(x, strong, step_generator(3, 1, 2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_same_seed_same_output_other_step_other_output() -> None:
    x = _batch()
    a = augment(x, AugmentParams(), step_generator(0, 2, 5))
    b = augment(x, AugmentParams(), step_generator(0, 2, 5))
    c = augment(x, AugmentParams(), step_generator(0, 2, 6))
    d = augment(x, AugmentParams(), step_generator(1, 2, 5))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_a_shard_gets_the_rows_of_the_global_batch() -> None:
    x = _batch(n=8, channels=3)
    whole = augment(x, AugmentParams(crop=0.2), step_generator(0, 0, 0))
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        shard = augment(x[rows], AugmentParams(crop=0.2), step_generator(0, 0, 0), rows, 8)
        assert torch.equal(shard, whole[rows])


def _affine_of(x: torch.Tensor, angle: float = 0, shear: float = 0, zoom: float = 1, shift=(0, 0)):
    n = x.shape[0]
    return _affine(
        x,
        torch.full((n,), math.radians(angle), dtype=torch.float64),
        torch.full((n,), math.radians(shear), dtype=torch.float64),
        torch.full((n,), zoom, dtype=torch.float64),
        torch.tensor([shift] * n, dtype=torch.float64),
        "zeros",
    )


def test_affine_quarter_turn_is_a_pixel_rotation() -> None:
    x = _batch(n=2, size=8)
    # positive angles turn counter-clockwise on screen (x right, y down): rot90 with k=-1
    assert torch.allclose(_affine_of(x, angle=90), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(_affine_of(x, angle=-90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


def test_affine_shift_moves_by_whole_pixels_and_pads() -> None:
    x = _batch(n=1, size=16)
    out = _affine_of(x, shift=(2 / 16, -1 / 16))  # 2 px right, 1 px up
    assert torch.allclose(out[..., :15, 2:], x[..., 1:, :14], atol=1e-5)
    assert torch.all(out[..., :, :2] == 0) and torch.all(out[..., 15, :] == 0)


def test_affine_zoom_keeps_the_centre_and_scales_distances() -> None:
    x = torch.zeros((1, 1, 33, 33))
    x[0, 0, 16, 20] = 1.0  # 4 px right of the centre pixel
    out = _affine_of(x, zoom=0.5)
    # with align_corners=False the centre of a 33-px image is pixel 16: 4 px -> 2 px
    assert int(out[0, 0].argmax()) == 16 * 33 + 18


def test_blur_keeps_the_mean_of_a_constant_image_and_smooths_an_edge() -> None:
    constant = torch.full((2, 1, 12, 12), 0.4)
    out = augment(constant, _only(blur=1.0, blur_sigma=2.0), step_generator(0, 0, 0))
    assert torch.allclose(out, constant, atol=1e-6)
    edge = torch.zeros((1, 1, 12, 12))
    edge[..., 6:] = 1.0
    out = augment(edge, _only(blur=1.0, blur_sigma=2.0), step_generator(0, 0, 0))
    assert 0 < out[0, 0, 6, 5] < 0.5 < out[0, 0, 6, 6] < 1


def test_brightness_and_noise_statistics() -> None:
    x = torch.full((2000, 1, 4, 4), 0.5)
    bright = augment(x, _only(brightness=0.4), step_generator(0, 0, 0))
    factors = bright[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert abs(float(factors.mean()) - 1.0) < 0.02  # uniform on [0.6, 1.4]
    noisy = augment(x, _only(noise=0.1), step_generator(0, 0, 0))
    # std uniform on [0, 0.1] per sample: overall variance E[s^2] = 0.1^2 / 3
    assert abs(float((noisy - 0.5).var()) - 0.01 / 3) < 0.0005


def test_saturation_leaves_grey_images_alone() -> None:
    grey = torch.rand((3, 1, 8, 8)).repeat(1, 3, 1, 1)
    out = augment(grey, _only(saturation=1.0), step_generator(0, 0, 0))
    assert torch.allclose(out, grey, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"rotation": 200}, "augment_params.rotation"),
        ({"scale": -0.1}, "augment_params.scale"),
        ({"shift": 0.6}, "augment_params.shift"),
        ({"blur": 1.5}, "augment_params.blur"),
        ({"blur_sigma": 0}, "augment_params.blur_sigma"),
        ({"noise": float("nan")}, "augment_params.noise"),
        ({"crop": "a lot"}, "augment_params.crop"),
        ({"padding": "mirror"}, "augment_params.padding"),
        ({"flip": 0.5}, "unknown augment parameter 'flip'"),
    ],
)
def test_out_of_range_parameters_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(augment_params=params)


def test_augmentation_defaults_on_for_image_folders_only() -> None:
    assert not TrainConfig(protocol="mnist5k").augments()
    assert TrainConfig(protocol="/some/folder").augments()
    assert TrainConfig(protocol="mnist5k", augment=True).augments()
    with pytest.raises(ConfigError, match="augment must be"):
        TrainConfig(augment="yes")


def test_augmented_training_is_seeded_and_resumable(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    config = tiny_config.replace(augment=True, epochs=2)
    train(config, tmp_path / "a", progress=False, data=small_data)
    train(config, tmp_path / "b", progress=False, data=small_data)
    train(config.replace(augment=False), tmp_path / "plain", progress=False, data=small_data)

    def crash(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, data=small_data, on_epoch_end=crash)
    train(config, tmp_path / "cut", resume=True, progress=False, data=small_data)
    a, b = load_checkpoint(tmp_path / "a")["network"], load_checkpoint(tmp_path / "b")["network"]
    cut = load_checkpoint(tmp_path / "cut")["network"]
    plain = load_checkpoint(tmp_path / "plain")["network"]
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], cut[key]), key
    assert not np.array_equal(a["embed.weight"].numpy(), plain["embed.weight"].numpy())

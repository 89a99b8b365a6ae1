from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.data import ProtocolData
from training.networks import LeNetPP, SmallResNet
from training.objectives import build_objective
from training.trainer import EpochSampler, TrainingError, load_checkpoint, load_run, train


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["network"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_networks_return_embedding_and_logits() -> None:
    embedding, logits = LeNetPP(1, 28, embedding_dim=12, num_logits=7, width=4)(
        torch.zeros(3, 1, 28, 28)
    )
    assert embedding.shape == (3, 12) and logits.shape == (3, 7)
    embedding, logits = SmallResNet(3, embedding_dim=10, num_logits=0, width=4)(
        torch.zeros(2, 3, 40, 40)
    )
    assert embedding.shape == (2, 10)
    assert logits is embedding  # no head: margin losses bring their own


def test_same_seed_same_weights_other_seed_other_weights(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    train(tiny_config, tmp_path / "a", progress=False, data=small_data)
    train(tiny_config, tmp_path / "b", progress=False, data=small_data)
    train(tiny_config.replace(seed=1), tmp_path / "c", progress=False, data=small_data)
    _assert_same(_state(tmp_path / "a"), _state(tmp_path / "b"))
    a, c = _state(tmp_path / "a"), _state(tmp_path / "c")
    assert not torch.equal(a["embed.weight"], c["embed.weight"])


class _Crash(Exception):
    pass


def test_resume_continues_exactly(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    config = tiny_config.replace(epochs=3, optimizer="adam", lr=0.01, schedule="step", step_size=1)
    train(config, tmp_path / "full", progress=False, data=small_data)

    def crash(epoch: int) -> None:
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(config, tmp_path / "cut", progress=False, data=small_data, on_epoch_end=crash)
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    run = train(config, tmp_path / "cut", resume=True, progress=False, data=small_data)
    assert [h["epoch"] for h in run.history] == [1, 2, 3]
    full, cut = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    _assert_same(full["network"], cut["network"])
    for key, state in full["optimizer"]["state"].items():
        for name, value in state.items():
            other = cut["optimizer"]["state"][key][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (key, name)
    assert full["scheduler"] == cut["scheduler"]
    for a, b in zip(full["history"], cut["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


def test_existing_run_needs_resume(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    train(tiny_config.replace(epochs=1), tmp_path, progress=False, data=small_data)
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config, tmp_path, progress=False, data=small_data)
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(tiny_config, tmp_path / "other", resume=True, progress=False, data=small_data)


@pytest.mark.parametrize(
    "loss",
    ["softmax", "garbage", "eos", "mel", "objectosphere", "arcface", "cosface", "cac", "simloss"],
)
def test_every_loss_trains_and_loads(
    loss: str, tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    config = tiny_config.replace(loss=loss, epochs=1, max_steps=2)
    run = train(config, tmp_path, progress=False, data=small_data)
    assert np.isfinite(run.history[0]["loss"])
    loaded = load_run(tmp_path, data=small_data)
    x = torch.from_numpy(small_data.val.inputs(slice(0, 5)))
    with torch.no_grad():
        assert torch.equal(loaded.network(x)[0], run.network.eval()(x)[0])


def test_objectives_that_ignore_negatives_never_train_on_them(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    seen: list[torch.Tensor] = []
    objective = build_objective("softmax", 6, 8)
    original = type(objective).forward

    def spy(self, embedding, logits, targets):  # type: ignore[no-untyped-def]
        seen.append(targets.clone())
        return original(self, embedding, logits, targets)

    type(objective).forward = spy
    try:
        train(
            tiny_config.replace(loss="softmax", epochs=1), tmp_path, progress=False, data=small_data
        )
    finally:
        type(objective).forward = original
    assert seen and all((t >= 0).all() for t in seen)


def test_sampler_shards_are_the_single_process_batch() -> None:
    targets = np.repeat(np.arange(4), [30, 5, 5, 10])
    single = list(EpochSampler(targets, 8, seed=3).batches(epoch=2))
    rank0 = list(EpochSampler(targets, 8, seed=3, rank=0, world_size=2).batches(epoch=2))
    rank1 = list(EpochSampler(targets, 8, seed=3, rank=1, world_size=2).batches(epoch=2))
    assert len(single) == len(rank0) == len(rank1) == 7
    for whole, a, b in zip(single, rank0, rank1, strict=True):
        assert np.array_equal(whole, np.concatenate([a, b]))
    assert sorted(np.concatenate(single)[: len(targets)]) == list(range(len(targets)))
    other_epoch = np.concatenate(list(EpochSampler(targets, 8, seed=3).batches(epoch=3)))
    assert not np.array_equal(np.concatenate(single), other_epoch)


def test_balanced_sampler_draws_classes_equally() -> None:
    targets = np.repeat([0, 1, -1], [900, 60, 40])
    order = EpochSampler(targets, 10, seed=0, balanced=True).order(0)
    shares = np.bincount(targets[order] + 1, minlength=3) / len(order)
    # expected 1/3 each; binomial std over 1000 draws is 0.015
    assert np.allclose(shares, 1 / 3, atol=0.06)
    plain = EpochSampler(targets, 10, seed=0).order(0)
    assert np.bincount(targets[plain] + 1)[1] == 900


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs on CUDA only")
def test_mixed_precision_on_gpu(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    config = tiny_config.replace(device="cuda", amp=True)
    run = train(config, tmp_path, progress=False, data=small_data)
    assert all(np.isfinite(h["loss"]) for h in run.history)
    assert load_checkpoint(tmp_path)["scaler"] is not None  # the grad scaler was in use
    train(config.replace(epochs=3), tmp_path, resume=True, progress=False, data=small_data)
    assert load_checkpoint(tmp_path)["epoch"] == 3


def test_margin_heads_default_to_adacos_fixed_scale() -> None:
    # s = sqrt(2)·ln(C - 1): C = 6 -> 1.414214·1.609438 = 2.276089; C = 2 floors C - 1 at 2
    assert build_objective("arcface", 6, 8).loss.scale == pytest.approx(2.276089, abs=1e-6)
    assert build_objective("cosface", 6, 8).loss.scale == pytest.approx(2.276089, abs=1e-6)
    assert build_objective("arcface", 2, 8).loss.scale == pytest.approx(0.980258, abs=1e-6)
    assert build_objective("arcface", 1001, 8).loss.scale == pytest.approx(9.76904, abs=1e-5)
    assert build_objective("cosface", 6, 8, {"scale": 64}).loss.scale == 64.0
    assert build_objective("arcface", 6, 8, {"scale": "auto", "margin": 0.3}).loss.margin == 0.3
    with pytest.raises(ValueError, match=r"loss_params\.scale must be a positive number or 'auto'"):
        build_objective("arcface", 6, 8, {"scale": "large"})

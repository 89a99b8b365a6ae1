"""Distributed data-parallel training with 2 CPU processes (gloo)."""

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training.config import TrainConfig
from training.data import ProtocolData
from training.trainer import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_ranks_end_with_identical_weights(
    tmp_path: Path, small_data: ProtocolData, tiny_config: TrainConfig
) -> None:
    config = tiny_config.replace(epochs=2, max_steps=3, balanced=True)
    mp.spawn(
        ddp_worker.run_rank,
        args=(2, _free_port(), config, small_data, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    checkpoint = load_checkpoint(tmp_path / "run")  # written by rank 0 only
    assert checkpoint["epoch"] == 2
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], checkpoint["network"][key]), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.pt", "rank1.pt", "run"]

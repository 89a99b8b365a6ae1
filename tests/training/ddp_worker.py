"""One rank of the 2-process DDP test (a plain module so that spawned processes can import it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from training.config import TrainConfig
from training.data import ProtocolData
from training.trainer import train


def run_rank(
    rank: int, world_size: int, port: int, config: TrainConfig, data: ProtocolData, root: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    try:
        run = train(config, Path(root) / "run", progress=False, data=data)
        torch.save(run.network.state_dict(), Path(root) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

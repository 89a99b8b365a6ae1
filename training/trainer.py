"""The training loop: seeded, resumable, optionally distributed (torchrun) and mixed precision.

A run directory holds ``config.yaml``, ``checkpoint.pt`` (written atomically after every
epoch: network, objective, optimiser, scheduler, grad scaler, RNG states, history) and
``history.json``. ``resume=True`` continues from the checkpoint exactly where an
uninterrupted run would be: the batches of epoch e depend only on (seed, e), and every piece
of state that changes during training is in the checkpoint.

Distributed data-parallel: launched with ``torchrun --nproc-per-node N -m opengallery.cli
train ...`` (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), gloo on CPU
and nccl on GPU. The global batch (``batch_size``) is cut into equal per-rank shards of the
same global sample order a single process would use; gradients are averaged by DDP; only
rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from training.augment import AugmentParams, augment, step_generator
from training.config import TrainConfig
from training.data import KNOWN, ProtocolData, Split, load_from_config
from training.metrics import closed_set_accuracy
from training.networks import EmbeddingNetwork, build_network
from training.objectives import Objective, build_objective

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
HISTORY = "history.json"


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why."""


# ---------------------------------------------------------------------------------------------
# Reproducibility and placement


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # warn_only: a few CUDA kernels have no deterministic version; CPU ones all do.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, local_rank)


# ---------------------------------------------------------------------------------------------
# Sampling


class EpochSampler:
    """The sample order of an epoch, a function of (seed, epoch) only, sharded across ranks.

    Shuffled, or class-balanced (every class, negatives counted as one class, drawn equally
    often, with replacement). Global batch i is ``order[i*B:(i+1)*B]``; rank r trains on its
    r-th equal share of it, so N ranks together see exactly the batch one process would.
    """

    def __init__(
        self,
        targets: np.ndarray,
        batch_size: int,
        seed: int,
        balanced: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise TrainingError(
                f"batch_size {batch_size} must be divisible by the number of processes {world_size}"
            )
        self.targets = np.asarray(targets)
        self.batch_size = batch_size
        self.seed = seed
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.targets)
        if not self.balanced:
            return rng.permutation(n)
        groups = [np.flatnonzero(self.targets == t) for t in np.unique(self.targets)]
        choice = rng.integers(0, len(groups), size=n)
        return np.array([groups[g][rng.integers(0, len(groups[g]))] for g in choice])

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        order = self.order(epoch)
        per_rank = self.batch_size // self.world_size
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.batch_size:
                # the last, short batch: wrap around so that every rank gets a full share
                batch = np.concatenate([batch, order[: self.batch_size - len(batch)]])
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


def augmented_inputs(
    split: Split,
    batch: np.ndarray,
    params: AugmentParams,
    seed: int,
    epoch: int,
    step: int,
    sampler: EpochSampler,
) -> Tensor:
    """Network input of one step's shard, augmented in pixel space, then normalised.

    The random draws depend on (seed, epoch, step) only and are made for the global batch, so
    a resumed run and N data-parallel processes see exactly what one uninterrupted process
    would.
    """
    pixels = torch.from_numpy(split.pixels[batch]).permute(0, 3, 1, 2).float() / 255.0
    # a shard is at most batch_size / world_size rows (shorter when the data are)
    start = sampler.rank * (sampler.batch_size // sampler.world_size)
    rows = slice(start, start + len(batch))
    pixels = augment(pixels, params, step_generator(seed, epoch, step), rows, sampler.batch_size)
    spec = split.protocol.input
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((pixels - mean) / std).contiguous()


# ---------------------------------------------------------------------------------------------
# Model


class TrainModule(nn.Module):
    """Network + objective as one module, so that DDP and the optimiser see both."""

    def __init__(self, network: EmbeddingNetwork, objective: Objective) -> None:
        super().__init__()
        self.network = network
        self.objective = objective

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        embedding, logits = self.network(x)
        loss = self.objective(embedding, logits, targets)
        return loss, self.objective.predict(embedding.detach(), logits.detach())


def build_model(config: TrainConfig, data: ProtocolData) -> TrainModule:
    objective = build_objective(
        config.loss, data.protocol.num_known, config.embedding_dim, config.loss_params
    )
    network = build_network(
        config.network,
        data.protocol.input.shape,
        config.embedding_dim,
        objective.num_logits,
        config.width,
    )
    return TrainModule(network, objective)


def build_optimizer(
    config: TrainConfig, module: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    parameters = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    elif config.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    return optimizer, scheduler


@torch.no_grad()
def embed(
    network: EmbeddingNetwork, split: Split, batch_size: int = 256, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw embeddings [N, D] and logits of a split, in evaluation mode."""
    was_training = network.training
    network.eval()
    embeddings, logits = [], []
    try:
        for start in range(0, len(split), batch_size):
            x = torch.from_numpy(split.inputs(slice(start, start + batch_size))).to(device)
            e, z = network(x)
            embeddings.append(e.float().cpu().numpy())
            logits.append(z.float().cpu().numpy())
    finally:
        network.train(was_training)
    d = network.embedding_dim
    if not embeddings:
        return np.zeros((0, d), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(embeddings), np.concatenate(logits)


@torch.no_grad()
def validation_accuracy(module: TrainModule, split: Split, device: torch.device) -> float:
    """Share of a split's known samples whose predicted class is right (NaN if none)."""
    known = split.with_roles(KNOWN)
    if len(known) == 0:
        return float("nan")
    was_training = module.training
    module.eval()
    predicted = []
    try:
        for start in range(0, len(known), 256):
            x = torch.from_numpy(known.inputs(slice(start, start + 256))).to(device)
            embedding, logits = module.network(x)
            predicted.append(module.objective.predict(embedding, logits).cpu().numpy())
    finally:
        module.train(was_training)
    return closed_set_accuracy(np.concatenate(predicted), known.targets)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@torch.no_grad()
def _average_buffers(module: nn.Module, world_size: int) -> None:
    """Average batch-norm running statistics over ranks (DDP keeps each rank's own)."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= world_size


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint (is {run_dir} a training run directory?)")
    try:
        # our own file: it holds numpy RNG state, which weights_only does not allow
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise TrainingError(f"{path}: cannot read the checkpoint: {error}") from None


@dataclass
class TrainedRun:
    """A run loaded for evaluation or export."""

    path: Path
    config: TrainConfig
    data: ProtocolData
    module: TrainModule
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def network(self) -> EmbeddingNetwork:
        return self.module.network


def load_run(run_dir: str | Path, data: ProtocolData | None = None) -> TrainedRun:
    """The network of a run's last checkpoint, in evaluation mode, with its protocol data."""
    checkpoint = load_checkpoint(run_dir)
    config = TrainConfig.from_dict(checkpoint["config"])
    data = data or load_from_config(config)
    module = build_model(config, data)
    module.network.load_state_dict(checkpoint["network"])
    module.objective.load_state_dict(checkpoint["objective"])
    module.eval()
    return TrainedRun(Path(run_dir), config, data, module, checkpoint.get("history", []))


# ---------------------------------------------------------------------------------------------
# Training


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    data: ProtocolData | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainedRun:
    """Train (or continue) a run in ``out_dir`` and return it.

    ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is written (1-based).
    """
    out = Path(out_dir)
    context = init_distributed(config.device)
    device = resolve_device(config.device)
    if device.type == "cuda" and context.enabled:
        device = torch.device("cuda", context.local_rank)

    checkpoint: dict[str, Any] | None = None
    if resume:
        checkpoint = load_checkpoint(out)
        # a run continues with its own configuration; only the number of epochs may grow
        config = TrainConfig.from_dict(checkpoint["config"]).replace(epochs=config.epochs)
    elif (out / CHECKPOINT).exists():
        raise TrainingError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )

    augment_params = config.augment_parameters() if config.augments() else None
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed, config.deterministic)
    data = data or load_from_config(config)
    module = build_model(config, data).to(device)
    train_split = data.train
    if not module.objective.uses_negatives:
        train_split = train_split.with_roles(KNOWN)
    elif not (train_split.targets < 0).any():
        raise TrainingError(
            f"loss {config.loss!r} trains on negatives, but protocol {data.protocol.name!r} "
            "has no negative training samples"
        )
    if len(train_split) == 0:
        raise TrainingError("the training split is empty")
    targets_all = torch.from_numpy(train_split.targets)

    optimizer, scheduler = build_optimizer(config, module)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch = 0
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        module.network.load_state_dict(checkpoint["network"])
        module.objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler") is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                scheduler.T_max = config.epochs  # --epochs may lengthen a resumed run
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        start_epoch = int(checkpoint["epoch"])
        history = list(checkpoint.get("history", []))

    wrapped: nn.Module = module
    if context.enabled:
        # 1-channel 5x5 convolutions get gradients in another (equivalent) memory layout than
        # DDP's buckets; harmless, and said once per step otherwise.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = EpochSampler(
        train_split.targets,
        config.batch_size,
        config.seed,
        config.balanced,
        context.rank,
        context.world_size,
    )
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / CONFIG)

    for epoch in range(start_epoch, config.epochs):
        module.train()
        steps = len(sampler) if config.max_steps is None else min(len(sampler), config.max_steps)
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (progress and context.is_main),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        total_loss, total_correct, total_known, total_seen = 0.0, 0, 0, 0
        epoch_started = time.perf_counter()
        for step, batch in enumerate(sampler.batches(epoch)):
            if step >= steps:
                break
            if augment_params is None:
                x = torch.from_numpy(train_split.inputs(batch))
            else:
                x = augmented_inputs(
                    train_split, batch, augment_params, config.seed, epoch, step, sampler
                )
            x = x.to(device)
            y = targets_all[batch].to(device)
            with torch.autocast(device.type, enabled=use_amp):
                loss, predicted = wrapped(x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                    "lower the learning rate"
                )
            known = y >= 0
            total_loss += loss.item() * len(y)
            total_seen += len(y)
            total_correct += int((predicted[known] == y[known]).sum())
            total_known += int(known.sum())
            bar.set_postfix(
                loss=f"{total_loss / total_seen:.4f}",
                acc=f"{total_correct / max(total_known, 1):.3f}",
            )
            bar.update()
        bar.close()
        if context.enabled:
            _average_buffers(module, context.world_size)
        if scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            "loss": total_loss / max(total_seen, 1),
            "train_accuracy": total_correct / max(total_known, 1),
            "val_accuracy": validation_accuracy(module, data.val, device),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - epoch_started,
        }
        history.append(record)
        if context.is_main:
            if progress:
                print(
                    f"epoch {epoch + 1}: loss {record['loss']:.4f}  "
                    f"train acc {record['train_accuracy']:.3f}  "
                    f"val acc {record['val_accuracy']:.3f}",
                    file=sys.stderr,
                )
            _atomic_save(
                {
                    "epoch": epoch + 1,
                    "config": config.to_dict(),
                    "network": module.network.state_dict(),
                    "objective": module.objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if use_amp else None,
                    "rng": _rng_state(),
                    "history": history,
                },
                out / CHECKPOINT,
            )
            (out / HISTORY).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        if context.enabled:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    module.eval()
    return TrainedRun(out, config, data, module.cpu() if device.type != "cpu" else module, history)

"""Fixtures of the training pipeline tests: a small slice of mnist5k and tiny configs."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import ProtocolData, Split, load_protocol


def _per_class(split: Split, n: int) -> Split:
    keep = np.concatenate([np.flatnonzero(split.labels == c)[:n] for c in np.unique(split.labels)])
    return split.subset(np.sort(keep))


@pytest.fixture(scope="session")
def mnist5k() -> ProtocolData:
    return load_protocol("mnist5k")


@pytest.fixture(scope="session")
def small_data(mnist5k: ProtocolData) -> ProtocolData:
    """mnist5k with 24 training, 12 validation and 12 test images per class."""
    return ProtocolData(
        mnist5k.protocol,
        _per_class(mnist5k.train, 24),
        _per_class(mnist5k.val, 12),
        _per_class(mnist5k.test, 12),
    )


@pytest.fixture
def tiny_config() -> TrainConfig:
    """A network and budget that train in well under a second per epoch."""
    return TrainConfig(
        protocol="mnist5k",
        loss="eos",
        width=4,
        embedding_dim=8,
        epochs=2,
        batch_size=16,
        max_steps=4,
        lr=0.05,
        threads=1,
    )

"""Every test starts from the same random state, so a failure reproduces."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(int(os.environ.get("LOSSES_TEST_SEED", "0")))

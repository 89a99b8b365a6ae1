from pathlib import Path

import pytest

from models.bundle import Bundle
from models.testing import make_random_bundle


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    """A fresh, valid random bundle (small calibration set)."""
    return make_random_bundle(tmp_path / "bundle", seed=3, calibration_size=50)

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.testing import make_random_bundle
from service.api.app import create_app
from service.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"
DIM = 16
# The index the service tests run against (read before the fixture below clears OPENGALLERY_*):
# e.g. OPENGALLERY_TEST_INDEX_URL='faiss://?storage=sq8' runs them all on 8-bit codes.
INDEX_URL = os.environ.get("OPENGALLERY_TEST_INDEX_URL")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """`n` random unit vectors of `dim` (float64), the embeddings the service tests send."""
    vectors = rng.standard_normal((n, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OPENGALLERY_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "random"
    make_random_bundle(path, seed=0, embedding_dim=DIM)
    return path


@pytest.fixture
def settings(tmp_path: Path, bundle_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY, index_url=INDEX_URL
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.headers["X-API-Key"] = ADMIN_KEY
        yield test_client

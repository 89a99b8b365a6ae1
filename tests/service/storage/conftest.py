"""Stores under test. Every backend passes the same contract suite: a backend joins it by adding
one entry to BACKENDS (the name of a fixture giving the URL of a fresh, empty database)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.storage import NewSample, Store, open_store

OLD, NEW = "m@1", "m@2"  # two model ids


def sample(vector: list[float], image: bytes | None = None) -> NewSample:
    """A sample of `vector` as the service hands it to a store: hashed by its image if it has
    one, else by its embedding's bytes."""
    array = np.asarray(vector, dtype=np.float32)
    content = image if image is not None else array.tobytes()
    return NewSample(
        hashlib.sha256(content).hexdigest(), "image" if image else "embedding", array, image
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


# postgres_url: tests/conftest.py (a real PostgreSQL server for the session).
BACKENDS: dict[str, str] = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}


@pytest.fixture(params=sorted(BACKENDS))
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh database of one backend."""
    return request.getfixturevalue(BACKENDS[request.param])


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()

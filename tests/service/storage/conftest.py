"""Stores under test. Every backend passes the same contract suite: a backend joins it by adding
one entry to BACKENDS (the name of a fixture giving the URL of a fresh, empty database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.storage import Store, open_store


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

"""Replicas in one process: two apps on one database (SQLite or PostgreSQL), each following the
change log through its own ServiceState."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.core.state import ServiceState


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that two replicas share: a SQLite file, or the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    return request.getfixturevalue("postgres_url")


def state(client: TestClient) -> ServiceState:
    return client.app.state.opengallery  # type: ignore[attr-defined,no-any-return]


def caught_up(*clients: TestClient) -> None:
    """Each replica applies the whole log now (the background thread would, within a poll)."""
    for client in clients:
        follower = state(client).follower
        assert follower is not None
        follower.catch_up()
        assert follower.cursor == state(client).store.last_change()

"""Engines shared by the test suite: one real PostgreSQL per session, a fresh database per test.

OPENGALLERY_TEST_POSTGRES_URL names a server to use instead (a role allowed to create
databases); otherwise PostgreSQL 16 from the pgserver wheel runs in a temporary directory on a
loopback port and is stopped after the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from service.testing_engines import PostgresServer, create_database, drop_database, with_database

POSTGRES_URL_VARIABLE = "OPENGALLERY_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The URL of a PostgreSQL database from which test databases are created."""
    given = os.environ.get(POSTGRES_URL_VARIABLE)
    if given:
        yield given
        return
    with PostgresServer() as server:
        yield server.admin_url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = f"opengallery_test_{uuid.uuid4().hex[:16]}"
    create_database(postgres_admin_url, name)
    yield with_database(postgres_admin_url, name)
    drop_database(postgres_admin_url, name)

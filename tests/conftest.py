"""Engines shared by the test suite, started when a test first needs them and stopped after
the session: one real PostgreSQL (a fresh database per test) and one real Milvus server
(collections under a fresh prefix per test).

OPENGALLERY_TEST_POSTGRES_URL names a PostgreSQL server to use instead (a role allowed to
create databases), OPENGALLERY_TEST_MILVUS_URL a Milvus server (milvus://host:port);
otherwise PostgreSQL 16 from the pgserver wheel and `milvus-lite server` run in temporary
directories on loopback ports.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from service.testing_engines import (
    MilvusServer,
    PostgresServer,
    create_database,
    drop_database,
    with_database,
)

POSTGRES_URL_VARIABLE = "OPENGALLERY_TEST_POSTGRES_URL"
MILVUS_URL_VARIABLE = "OPENGALLERY_TEST_MILVUS_URL"


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


@pytest.fixture(scope="session")
def milvus_server_url() -> Iterator[str]:
    """The milvus:// URL of a Milvus server."""
    given = os.environ.get(MILVUS_URL_VARIABLE)
    if given:
        yield given
        return
    with MilvusServer() as server:
        yield server.url


@pytest.fixture
def milvus_url(milvus_server_url: str) -> Iterator[str]:
    """A Milvus index URL whose collections no other test sees; they are dropped after."""
    from service.index.milvus import MilvusBackend

    prefix = f"test_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in milvus_server_url else "?"
    url = f"{milvus_server_url}{separator}prefix={prefix}"
    yield url
    backend = MilvusBackend(url)
    client = backend.connection.client
    for collection in client.list_collections():
        if collection.startswith(f"{prefix}_"):
            client.drop_collection(collection)
    backend.close()

"""Index backends under test: every SubjectSearch test runs on each one (see BACKENDS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.index import IndexBackend, open_index

# backend name -> the fixture giving its index URL (milvus_url: tests/conftest.py, a real
# Milvus server for the session).
BACKENDS: dict[str, str | None] = {"faiss": None, "faiss-sq8": "sq8_url", "milvus": "milvus_url"}


@pytest.fixture
def sq8_url() -> str:
    return "faiss://?storage=sq8"


@pytest.fixture(params=sorted(BACKENDS))
def index_backend(request: pytest.FixtureRequest) -> Iterator[IndexBackend]:
    fixture = BACKENDS[request.param]
    backend = open_index(request.getfixturevalue(fixture) if fixture else None)
    yield backend
    close = getattr(backend, "close", None)
    if close is not None:
        close()

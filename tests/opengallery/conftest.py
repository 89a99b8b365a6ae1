"""The service's test fixtures (a random bundle, settings, a clean environment), for the
client and the HTTP commands, which are tested against a real server."""

from __future__ import annotations

from tests.service.conftest import (  # noqa: F401 (fixtures are found by name)
    ADMIN_KEY,
    DIM,
    _clean_environment,
    bundle_path,
    settings,
)

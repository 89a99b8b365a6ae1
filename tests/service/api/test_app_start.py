"""What the app does at start-up besides opening its state."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_a_server_process_freezes_what_start_up_built(settings: Settings) -> None:
    with TestClient(create_app(settings, freeze_after_start=True)) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("unfrozen")
def test_an_app_made_for_other_uses_freezes_nothing(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() == 0

"""What the app does at start-up besides opening its state."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings

from ..conftest import ADMIN_KEY, unit


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


@pytest.mark.usefixtures("unfrozen")
def test_a_gallery_deleted_after_a_frozen_start_frees_its_index(settings: Settings) -> None:
    """Frozen objects are never collected: what start-up built must not hold a gallery's
    index in a reference cycle, or deleting the gallery would keep its vectors for good."""
    headers = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/galleries", json={"name": "g"}, headers=headers).status_code == 201
        vectors = unit(np.random.default_rng(0), 50)
        items = [{"subject_id": f"s{i}", "embedding": v.tolist()} for i, v in enumerate(vectors)]
        body = {"items": items, "create_subjects": True}
        enrolled = client.post("/v1/galleries/g/samples", json=body, headers=headers)
        assert enrolled.status_code == 201, enrolled.text
    with TestClient(create_app(settings, freeze_after_start=True)) as client:
        index = weakref.ref(client.app.state.opengallery.live.get("g").active.index)
        assert gc.get_freeze_count() > 0 and index() is not None
        assert client.delete("/v1/galleries/g", headers=headers).status_code == 204
        gc.collect()
        assert index() is None

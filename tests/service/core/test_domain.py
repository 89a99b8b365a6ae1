"""The domain's promises that the redesign made explicit: validation before any decoding, a
missing subject found before embedding, thresholds kept across writes that change no vector,
and one status per error code."""

from __future__ import annotations

import ast
import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.errors import STATUS_BY_CODE
from service.core.errors import UNAVAILABLE_CODES

from ..conftest import DIM

SERVICE = Path(__file__).resolve().parents[3] / "service"


def png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def embed_calls(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each call to the default model's embedder received."""
    model = client.app.state.opengallery.models.get(  # type: ignore[attr-defined]
        client.app.state.opengallery.models.default_model_id  # type: ignore[attr-defined]
    )
    calls: list[int] = []
    original = model.embedder.embed_pixels  # every image path (enrolment, probes) ends here

    def counting(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(model.embedder, "embed_pixels", counting)
    return calls


def test_identify_validates_its_options_before_decoding(
    client: TestClient, embed_calls: list[int]
) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    corrupt = base64.b64encode(b"not an image").decode("ascii")
    for body, code in [
        ({"images": [corrupt], "fpir": 0.001}, "unsupported_fpir"),
        ({"images": [png(1)], "fpir": 0.1, "threshold": 0.5}, "validation_error"),
        ({"images": [png(1)], "top_k": 10_000}, "invalid_top_k"),
    ]:
        response = client.post("/v1/galleries/g/identify", json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == code
    response = client.post(
        "/v1/galleries/g/verify", json={"subject_id": "a", "image": png(1), "fpir": 0.001}
    )
    assert response.json()["error"]["code"] == "unsupported_fpir"
    assert embed_calls == []


def test_enrolment_into_a_missing_subject_embeds_nothing(
    client: TestClient, embed_calls: list[int]
) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    response = client.post("/v1/galleries/g/subjects/ghost/samples", json={"images": [png(2)]})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "subject 'ghost' does not exist"
    assert embed_calls == []
    client.put("/v1/galleries/g/subjects/ghost")
    response = client.post("/v1/galleries/g/subjects/ghost/samples", json={"images": [png(2)]})
    assert response.status_code == 201 and embed_calls == [1]


def test_identify_never_searches_the_calibration_set(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration follows writes; a request searches its own probes only, and a "max"
    enrolment updates the calibration without any search (one product with the new vectors)."""
    client.post("/v1/galleries", json={"name": "g"})
    client.put("/v1/galleries/g/subjects/a")
    rng = np.random.default_rng(0)
    client.post(
        "/v1/galleries/g/subjects/a/samples",
        json={"embeddings": rng.standard_normal((3, DIM)).tolist()},
    )
    active = client.app.state.opengallery.live.get("g").active  # type: ignore[attr-defined]
    searches: list[int] = []
    original = active.index.search

    def counting(queries: np.ndarray, top_k: int) -> list:
        searches.append(len(queries))
        return original(queries, top_k)

    monkeypatch.setattr(active.index, "search", counting)
    probe = {"embeddings": rng.standard_normal((2, DIM)).tolist()}
    first = client.post("/v1/galleries/g/identify", json=probe).json()["results"][0]
    assert searches == [2]
    kept = active.calibration.kept
    client.put("/v1/galleries/g/subjects/a", json={"metadata": {"name": "Ann"}})
    client.put("/v1/galleries/g/subjects/b")  # a subject without samples
    assert active.calibration.kept is kept  # no vector changed: nothing recomputed
    second = client.post("/v1/galleries/g/identify", json=probe).json()["results"][0]
    assert searches == [2, 2] and second["threshold"] == first["threshold"]
    client.post("/v1/galleries/g/subjects/b/samples", json={"embeddings": probe["embeddings"]})
    assert searches == [2, 2]  # the enrolment searched nothing
    third = client.post("/v1/galleries/g/identify", json=probe).json()["results"][0]
    assert searches == [2, 2, 2] and third["subject_id"] == "b"


def _raised_codes() -> set[str]:
    """Every literal code given to ServiceError or ImageRejected (or a subclass) in service/."""
    codes = set()
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None))
                in {"ServiceError", "ImageRejected", "__init__"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                codes.add(node.args[0].value)
    return codes


def test_every_error_code_has_one_http_status() -> None:
    codes = _raised_codes()
    assert {"not_found", "unsupported_fpir", "invalid_image", "already_on_model"} <= codes
    assert codes - set(STATUS_BY_CODE) == set()
    # The caller's errors are 4xx; a full disk is the server's (507), a dependency out of
    # reach and the HTTP server over its connection limit (retry later) a 503.
    unavailable = set(UNAVAILABLE_CODES.values()) | {"server_busy"}
    assert STATUS_BY_CODE["insufficient_storage"] == 507
    assert {STATUS_BY_CODE[code] for code in unavailable} == {503}
    client_codes = set(STATUS_BY_CODE) - {"insufficient_storage"} - unavailable
    assert all(400 <= STATUS_BY_CODE[code] < 500 for code in client_codes)

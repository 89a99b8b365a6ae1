"""Property-based runs over the OpenAPI schema (schemathesis, bounded): no input causes a 5xx,
responses conform to the schema, and a request the schema calls valid is accepted unless its
content or the server's state says otherwise (REFUSALS_THE_SCHEMA_CANNOT_EXPRESS)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread

from ..conftest import ADMIN_KEY, DIM

# The schema does not depend on the data or the model: any settings give the same document.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
valid_requests = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
valid_requests.config.generation.update(
    modes=[GenerationMode.POSITIVE], with_security_parameters=False
)

# What a JSON schema cannot say, each answered with its own code (docs/service.md lists them):
# the bytes of an image or an archive, the model's embedding dimension and registered models,
# the FPIR the calibration set in effect supports, bundles on the server's disk, and which
# cursors this service issued. 404 and 409 (ids that do not exist or already do) are state too.
REFUSALS_THE_SCHEMA_CANNOT_EXPRESS = {
    "invalid_image",
    "blank_image",
    "invalid_archive",
    "invalid_embedding",
    "unknown_model",
    "unsupported_fpir",
    "invalid_bundle",
    "invalid_cursor",
}
STATE_STATUSES = {401, 403, 404, 409}

EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@dataclass(frozen=True)
class LiveService:
    url: str
    admin_key_id: int


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Iterator[LiveService]:
    import httpx

    data_dir = tmp_path_factory.mktemp("schemathesis")
    # The negative run sends wrong keys by design: no failed-auth limit, or its 429s would
    # hide every later case.
    app = create_app(
        Settings(data_dir=data_dir, model=bundle_path, admin_key=ADMIN_KEY, auth_failure_burst=0)
    )
    with ServerThread(app) as server:
        headers = {"X-API-Key": ADMIN_KEY}
        # A gallery with a subject and a sample, so that generated requests reach deep code.
        httpx.post(f"{server.url}/v1/galleries", json={"name": "g"}, headers=headers)
        httpx.put(f"{server.url}/v1/galleries/g/subjects/s", headers=headers)
        httpx.post(
            f"{server.url}/v1/galleries/g/subjects/s/samples",
            json={"embeddings": [[1.0] * DIM]},
            headers=headers,
        )
        keys = httpx.get(f"{server.url}/v1/keys", headers=headers).json()["keys"]
        (admin,) = [key for key in keys if key["scope"] == "admin"]
        yield LiveService(server.url, admin["key_id"])


def aim(case: schemathesis.Case, live: LiveService) -> None:
    """Half the cases target the existing gallery and subject (never deleting the gallery);
    none revokes the key the run uses, which is valid but would refuse everything after it."""
    if case.path_parameters.get("key_id") == live.admin_key_id:
        case.path_parameters["key_id"] = live.admin_key_id + 10**9
    targeted = zlib.crc32(repr(case.body).encode()) % 2 == 0
    if targeted and "gallery" in case.path_parameters and case.method != "DELETE":
        case.path_parameters["gallery"] = "g"
        if "subject_id" in case.path_parameters:
            case.path_parameters["subject_id"] = "s"


@schema.parametrize()
@EXAMPLES
def test_no_server_errors(case: schemathesis.Case, live: LiveService) -> None:
    aim(case, live)
    case.call_and_validate(
        base_url=live.url,
        headers={"X-API-Key": ADMIN_KEY},
        checks=[not_a_server_error, response_schema_conformance],
    )


def refusal_reasons(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(code, message) of a refusal, or of each rejected sample when all samples were."""
    error = body["error"]
    samples = (error.get("details") or {}).get("samples")
    if error["code"] == "all_samples_rejected" and samples:
        return [(sample["code"], sample["reason"]) for sample in samples]
    return [(error["code"], error["message"])]


@valid_requests.parametrize()
@EXAMPLES
def test_valid_requests_are_refused_only_on_content_or_state(
    case: schemathesis.Case, live: LiveService
) -> None:
    aim(case, live)
    response = case.call(base_url=live.url, headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code < 500, response.text
    if response.status_code < 400 or response.status_code in STATE_STATUSES:
        return
    for code, message in refusal_reasons(response.json()):
        assert code in REFUSALS_THE_SCHEMA_CANNOT_EXPRESS, (response.status_code, code, message)
        if code == "invalid_embedding":
            # The schema says "at least one number": only the model knows how many, and no
            # schema says "not all zeros".
            assert "model expects" in message or "cannot be normalised" in message, message

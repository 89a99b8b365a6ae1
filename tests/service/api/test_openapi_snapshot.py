"""The OpenAPI document is the HTTP contract: a change to it must be deliberate.

Regenerate after an intended change with: `.venv/bin/python -m service.api.openapi --write`.
"""

from __future__ import annotations

import json

from service.api.openapi import SNAPSHOT, openapi_document, render


def test_openapi_matches_snapshot() -> None:
    current = render(openapi_document())
    committed = SNAPSHOT.read_text(encoding="utf-8")
    assert json.loads(current) == json.loads(committed), (
        "the OpenAPI schema changed; if intended, run `python -m service.api.openapi --write` "
        "and commit tests/service/openapi_snapshot.json"
    )


def test_snapshot_holds_the_design_endpoints() -> None:
    paths = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["paths"]
    expected = {
        "/v1/galleries": {"get", "post"},
        "/v1/galleries/{gallery}": {"get", "delete"},
        "/v1/galleries/{gallery}/subjects": {"get"},
        "/v1/galleries/{gallery}/subjects/{subject_id}": {"get", "put", "delete"},
        "/v1/galleries/{gallery}/subjects/{subject_id}/samples": {"post"},
        "/v1/galleries/{gallery}/subjects/{subject_id}/samples/{sample_id}": {"delete"},
        "/v1/galleries/{gallery}/identify": {"post"},
        "/v1/galleries/{gallery}/verify": {"post"},
        "/v1/models": {"get", "post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    identify = paths["/v1/galleries/{gallery}/identify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(identify)

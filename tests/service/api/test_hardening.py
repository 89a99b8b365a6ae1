"""Faults a reliability probe found: each test here fails on the code before its fix."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.cli import configure_logging
from service.settings import Settings
from service.storage.sqlite.connection import SQLiteConnection
from service.testing import ServerThread, png_bytes

from ..conftest import ADMIN_KEY


def test_control_characters_in_a_url_are_escaped_in_the_access_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="opengallery.access"):
        client.get("/v1/galleries/a%0Aforged%0D%1B[31m%00%C2%85end")
    records = [r for r in caplog.records if r.name == "opengallery.access"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert message.isprintable(), message
    for escaped in ("\\n", "\\r", "\\x1b", "\\x00", "\\x85"):
        assert escaped in message


def test_the_service_log_format_keeps_each_record_on_one_line() -> None:
    root = logging.getLogger("opengallery")
    saved = (root.handlers[:], root.level, root.propagate)
    stream = io.StringIO()
    try:
        configure_logging("info")
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
        logging.getLogger("opengallery.service").warning("gallery %s", "g\nFAKE\r\x1b[0m\x00")
    finally:
        root.handlers[:], root.level, root.propagate = saved
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("gallery g\\nFAKE\\r\\x1b[0m\\x00")


JSON_ROUTES = [
    ("POST", "/v1/galleries"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/models"),
    ("PUT", "/v1/galleries/g/subjects/a"),
    ("POST", "/v1/galleries/g/identify"),
    ("POST", "/v1/galleries/g/subjects/a/samples"),
    ("POST", "/v1/galleries/g/migrate"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_a_request_without_a_key_is_401_whatever_its_body(
    client: TestClient, method: str, path: str
) -> None:
    for key in ("", "wrong-key"):
        response = client.request(
            method,
            path,
            content=b"{not json",
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"


def test_a_large_body_without_a_key_is_refused_before_it_is_read(settings: Settings) -> None:
    declared = 60 * 1024 * 1024
    head = (
        f"POST /v1/galleries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    with (
        ServerThread(create_app(settings)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock,
    ):
        sock.sendall(head.encode() + b"[" * 65536)  # a sliver of the declared body
        answer = b""
        while chunk := sock.recv(65536):  # the server answers and closes; 30 s timeout
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 401"), answer[:200]
    header_block, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in header_block.lower()
    assert json.loads(body)["error"]["code"] == "unauthorized"


def test_failed_authentication_is_rate_limited_per_address_but_valid_keys_pass(
    settings: Settings,
) -> None:
    limited = settings.model_copy(
        update={"auth_failure_burst": 3, "auth_failures_per_second": 0.01}
    )
    with TestClient(create_app(limited)) as client:
        statuses = [
            client.get("/v1/galleries", headers={"X-API-Key": f"wrong-{n}"}).status_code
            for n in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        refused = client.get("/v1/galleries", headers={"X-API-Key": "wrong"})
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert 1 <= int(refused.headers["Retry-After"]) <= 100
        valid = client.get("/v1/galleries", headers={"X-API-Key": ADMIN_KEY})
        assert valid.status_code == 200
        assert client.get("/healthz").status_code == 200


def test_the_failure_limiter_refills_at_its_rate() -> None:
    from service.core.ratelimit import FailureLimiter

    now = [0.0]
    limiter = FailureLimiter(2, 0.5, clock=lambda: now[0])
    limiter.record_failure("a")
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 2  # one token back after 1 / 0.5 s
    assert limiter.retry_after("b") == 0  # another address is not affected
    now[0] = 2.0
    assert limiter.retry_after("a") == 0


def test_a_full_disk_is_507_reported_by_readyz_and_recovers_by_itself(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    page_limit: list[int | None] = [None]
    opened = SQLiteConnection._connection

    def limited_connection(self: SQLiteConnection) -> sqlite3.Connection:
        connection = opened(self)
        if page_limit[0] is not None:  # a database that may not grow: what a full disk does
            connection.execute(f"PRAGMA max_page_count = {page_limit[0]}")
        return connection

    monkeypatch.setattr(SQLiteConnection, "_connection", limited_connection)
    with TestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = ADMIN_KEY
        assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        assert client.put("/v1/galleries/g/subjects/a").status_code == 201
        first = client.post(
            "/v1/galleries/g/subjects/a/samples",
            files=[("images", ("0.png", png_bytes(0, (28, 28)), "image/png"))],
        )
        assert first.status_code == 201
        store = client.app.state.opengallery.store  # type: ignore[attr-defined]
        page_limit[0] = int(store._connection().execute("PRAGMA page_count").fetchone()[0])

        big = [("images", (f"{n}.png", png_bytes(n, (200, 200)), "image/png")) for n in (1, 2)]
        full = client.post("/v1/galleries/g/subjects/a/samples", files=big)
        assert full.status_code == 507, full.text
        assert full.json()["error"]["code"] == "insufficient_storage"
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["storage_full"] is True
        assert "opengallery_storage_full 1" in client.get("/metrics").text

        page_limit[0] = 1_000_000_000  # space is back
        for connection in store._connections:
            connection.execute(f"PRAGMA max_page_count = {page_limit[0]}")
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:  # probed at most once a second
            assert time.monotonic() < deadline, "readyz did not recover"
            time.sleep(0.05)
        assert client.get("/readyz").json()["storage_full"] is False
        again = client.post("/v1/galleries/g/subjects/a/samples", files=big)
        assert again.status_code == 201, again.text
        samples = client.get("/v1/galleries/g/subjects/a").json()["samples"]
        assert len(samples) == 3  # the first (acknowledged) sample and the two retried
        assert "opengallery_storage_full 0" in client.get("/metrics").text


def test_docs_work_offline_and_the_root_leads_there(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 100, source
    assert client.get("/openapi.json").status_code == 200
    root = client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/docs"


def test_405_lists_every_allowed_method(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    response = client.patch("/v1/galleries/g")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "DELETE"} <= allowed and "PATCH" not in allowed


def test_openapi_documents_id_rules_cursor_form_bounds_and_400(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/galleries/{gallery}/subjects/{subject_id}"]["put"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    for name in ("gallery", "subject_id"):
        schema = parameters[name]
        assert (schema["minLength"], schema["maxLength"]) == (1, 256)
        pattern = re.compile(schema["pattern"])
        assert pattern.match("José Ñ-1") and pattern.match("名前")
        for invalid in ("a/b", ".", "..", "a\nb"):
            assert not pattern.match(invalid), invalid
    listing = document["paths"]["/v1/galleries/{gallery}/subjects"]["get"]
    cursor = next(p for p in listing["parameters"] if p["name"] == "cursor")
    assert "next_cursor" in cursor["description"]
    identify = document["paths"]["/v1/galleries/{gallery}/identify"]["post"]
    form = identify["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["fpir"]["exclusiveMinimum"] == 0 and form["fpir"]["maximum"] == 1
    assert "400" in identify["responses"] and "507" in identify["responses"]


def test_openapi_bounds_what_the_server_refuses(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    listing = document["paths"]["/v1/galleries/{gallery}/subjects"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 1000  # OPENGALLERY_MAX_PAGE_SIZE's default
    identify = document["paths"]["/v1/galleries/{gallery}/identify"]["post"]["requestBody"]
    form = identify["content"]["multipart/form-data"]["schema"]
    assert form["additionalProperties"] is False and form["properties"]["top_k"]["maximum"] == 100
    json_body = identify["content"]["application/json"]["schema"]
    assert json_body["properties"]["top_k"]["maximum"] == 100
    assert {"required": ["images"]} in json_body["oneOf"]


def test_a_subnormal_fpir_is_422_not_500(client: TestClient) -> None:
    response = client.post("/v1/galleries", json={"name": "g", "fpir": 5e-324})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unsupported_fpir"

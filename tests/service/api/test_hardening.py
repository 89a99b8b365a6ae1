"""Faults a reliability probe found: each test here fails on the code before its fix."""

from __future__ import annotations

import io
import logging

import pytest
from fastapi.testclient import TestClient

from service.cli import configure_logging


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

"""Connections against a real server process: timeouts, limits, and the JSON error shape.

Each waits on the server with a socket timeout as its deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerProcess

from ..conftest import ADMIN_KEY

DEADLINE = 20.0  # seconds a test waits for the server before it fails


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Iterator[int]:
    env = {
        "OPENGALLERY_HEADER_TIMEOUT": "1",
        "OPENGALLERY_BODY_TIMEOUT": "1",
        "OPENGALLERY_MAX_HEADER_BYTES": "16384",
    }
    data_dir = tmp_path_factory.mktemp("guarded") / "data"
    with ServerProcess(data_dir, bundle_path, admin_key=ADMIN_KEY, env=env) as server:
        yield server.port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def _read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_a_connection_that_sends_nothing_is_closed(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        assert _read_until_closed(sock) == b""  # a socket timeout here fails the test


def test_half_sent_headers_are_closed(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = _read_until_closed(sock)
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (408, "request_timeout")


def test_a_stalled_body_is_answered_408_and_closed(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        sock.sendall(
            b"POST /v1/galleries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-API-Key: {ADMIN_KEY}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"name": '
        )
        answer = _read_until_closed(sock)
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (408, "request_timeout")
    assert b"connection: close" in answer.lower()


def test_headers_over_the_limit_are_431(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        answer = _read_until_closed(sock)
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (431, "headers_too_large")


def test_malformed_http_gets_the_json_error_shape(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n")
        answer = _read_until_closed(sock)
    status, error = _status_and_error(answer)
    assert (status, error["code"]) == (400, "bad_request")


def test_a_keep_alive_connection_serves_requests_and_then_idles_out(guarded_server: int) -> None:
    with _connect(guarded_server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
        assert _read_until_closed(sock) == b""  # closed by the keep-alive timeout


def test_over_the_connection_limit_new_requests_get_503(tmp_path: Path, bundle_path: Path) -> None:
    env = {"OPENGALLERY_MAX_CONNECTIONS": "3"}
    with ServerProcess(tmp_path / "data", bundle_path, admin_key=ADMIN_KEY, env=env) as server:
        idle = [_connect(server.port) for _ in range(3)]
        try:
            with _connect(server.port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head, _, body = _read_until_closed(sock).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503")
                assert b"content-type: application/json" in head.lower()
                assert json.loads(body)["error"]["code"] == "server_busy"
            # Three connections are within the limit: the third one is served.
            idle[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_until_closed(idle[-1]).startswith(b"HTTP/1.1 200")
        finally:
            for sock in idle:
                sock.close()


def test_a_500_closes_the_connection(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.core.galleries import Galleries

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Galleries, "list_galleries", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/v1/galleries", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 500
    assert response.headers["connection"] == "close"

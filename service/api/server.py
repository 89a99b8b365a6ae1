"""uvicorn's HTTP protocol (httptools) with the guards it lacks, and the server's settings.

uvicorn closes a connection idle *between* requests (`timeout_keep_alive`) but not one that
never finishes its request headers, and httptools has no limit on the headers' size. Here a
connection must complete each request's headers within `header_timeout` seconds and in at most
`max_header_bytes`, or it is answered (408 / 431, the JSON error shape) and closed. Malformed
HTTP is answered 400 in the JSON error shape too, and so is a request over the connection
limit (503 `server_busy`, where uvicorn's own limit answers in plain text).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.errors import error_body, status_for
from service.settings import Settings

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _raw_error(code: str, message: str) -> bytes:
    status = status_for(code)
    body = json.dumps(error_body(code, message)).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} ".encode()
        + _REASONS.get(status, b"Error")
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


async def _server_busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app that answers a request over the connection limit."""
    body = json.dumps(
        error_body("server_busy", "the server has too many connections open; retry later")
    ).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def _await_headers(self) -> None:
        self._header_bytes = 0
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._headers_too_slow
        )

    def _headers_done(self) -> None:
        self._awaiting_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, code: str, message: str) -> None:
        self._headers_done()
        if not self.transport.is_closing():
            self.transport.write(_raw_error(code, message))
            self.transport.close()

    def _headers_too_slow(self) -> None:
        if not self._awaiting_headers or not (self.cycle is None or self.cycle.response_complete):
            return
        if self._header_bytes == 0:
            # Nothing of a request yet: close quietly, as uvicorn's keep-alive timeout does (a
            # 408 here could be read as the answer to a request the client sends meanwhile).
            self._headers_done()
            self.transport.close()
        else:
            self._refuse(
                "request_timeout",
                f"the request's headers did not arrive within {self.header_timeout:g} s",
            )

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still no end of headers after this many bytes: the headers themselves are too large.
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(
                "headers_too_large",
                f"the request's headers exceed {self.max_header_bytes} bytes",
            )

    def on_headers_complete(self) -> None:
        self._headers_done()
        limit = self.max_connections
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            # The request is routed to _server_busy instead of the application.
            application, self.app = self.app, _server_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = application
        else:
            super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._headers_done()
        if not self.transport.is_closing():
            self.transport.write(_raw_error("bad_request", f"malformed HTTP request: {msg}"))
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.Config arguments for the connection limits of `settings`: the guarded
    httptools protocol above (httptools is a dependency: h11 has no header timeout)."""
    protocol = type(
        "ConfiguredHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "max_header_bytes": settings.max_header_bytes,
            "max_connections": settings.max_connections,
        },
    )
    return {"timeout_keep_alive": settings.keep_alive_timeout, "http": protocol}

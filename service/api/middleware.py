"""ASGI middleware: request ids in logs and headers, the API key gate, body size limit,
metrics per route.

Written as plain ASGI (not BaseHTTPMiddleware) so that streaming bodies are counted as they
arrive and a too-large upload is refused before it is read in full. Every `/v1/` request must
carry a valid key before any of its body is read (the route's dependency then checks the
key's scope); failed attempts are limited per client address.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import describe_unavailable, error_body, status_for
from service.core.errors import UNAVAILABLE_CODES, ServiceError
from service.core.logsafe import escape_control
from service.core.metrics import Metrics
from service.core.ratelimit import FailureLimiter

logger = logging.getLogger("opengallery.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The request state's entry for (key, its record) as the gate authenticated them.
AUTHENTICATED_KEY = "authenticated_key"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (for formats that use %(request_id)s)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class BodyTooSlow(ServiceError):
    """The next part of the body did not come in time (answered 408 by the middleware)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            "request_timeout", f"the request body stalled: nothing arrived for {seconds:g} s"
        )


class BodyTooLarge(ServiceError):
    """The body grew past the limit as it arrived (answered 413 by the middleware)."""

    def __init__(self, limit: int) -> None:
        super().__init__("payload_too_large", f"request body exceeds {limit} bytes")


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(error_body(code, message)).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        auth_failures: FailureLimiter | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.auth_failures = auth_failures or FailureLimiter(0, 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder: dict[str, Any] = {"status": 500, "started": False}
        try:
            await self._handle(scope, receive, send, headers, request_id, status_holder)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            status = int(status_holder["status"])
            self.metrics.observe_request(scope.get("method", "?"), template, status, seconds)
            # The request id is in the record (RequestIdFilter) while the contextvar is set.
            logger.info(
                '"%s %s" %d %.1fms',
                escape_control(scope.get("method")),
                escape_control(scope.get("path")),
                status,
                seconds * 1000,
            )
            request_id_var.reset(token)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        request_id: str,
        status_holder: dict[str, Any],
    ) -> None:
        async def reply(
            code: str, message: str, extra: list[tuple[bytes, bytes]] | None = None
        ) -> None:
            status = status_for(code)
            status_holder["status"] = status
            # A body left unread is not worth reading to keep the connection: close it.
            unread = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            if unread and (b"connection", b"close") not in (extra or []):
                extra = [*(extra or []), (b"connection", b"close")]
            await _send_error(send, status, code, message, request_id, extra)

        # An encoded '/' in an id would be decoded into the path and silently route elsewhere.
        raw_path: bytes = scope.get("raw_path") or b""
        if scope.get("path", "").startswith("/v1/"):
            if b"%2f" in raw_path.lower():
                await reply("invalid_id", "ids must not contain '/' (found %2F in the path)")
                return
            # The server decodes invalid UTF-8 to U+FFFD, so "%FF" and "%EF%BF%BD" would name
            # the same id and neither would round-trip: refuse it instead.
            try:
                unquote_to_bytes(raw_path).decode("utf-8")
            except UnicodeDecodeError:
                await reply("invalid_id", "the path's percent-encoding is not valid UTF-8")
                return
            refusal = self._check_key(scope, headers)
            if refusal is not None:
                await reply(*refusal)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await reply("bad_request", "invalid Content-Length header")
                return
            if declared > self.max_body_bytes:
                await reply(
                    "payload_too_large",
                    f"request body is {declared} bytes; the limit is {self.max_body_bytes}",
                )
                return
        received = 0
        body_done = False
        refused = False

        async def refuse(error: ServiceError) -> Message:
            # Answered here, not raised: the app's body parsing would turn an exception into a
            # generic 400. The app is told the client left, and whatever it sends is dropped.
            nonlocal refused
            if not status_holder["started"] and not refused:
                await reply(error.code, error.message, [(b"connection", b"close")])
            refused = True
            return {"type": "http.disconnect"}

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done or self.body_timeout is None:
                # After the body, receive() waits for a disconnect: no timeout applies.
                message = await receive()
            else:
                try:
                    # A deadline on this task: cheaper than wait_for, which wraps every
                    # message's receive() in a task of its own.
                    async with asyncio.timeout(self.body_timeout):
                        message = await receive()
                except TimeoutError:
                    return await refuse(BodyTooSlow(self.body_timeout))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    return await refuse(BodyTooLarge(self.max_body_bytes))
            return message

        async def tracking_send(message: Message) -> None:
            if refused:
                return
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        await self.app(scope, counting_receive, tracking_send)

    def _check_key(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[str, str, list[tuple[bytes, bytes]]] | None:
        """None when the request carries a valid key; else the refusal (code, message, headers).

        A valid key always passes, so that nobody is locked out by others' failures from the
        same address; only failures count, and past the limit they are answered 429.
        """
        state = getattr(scope["app"].state, "opengallery", None)
        if state is None:  # not started: the route answers (it cannot be reached before)
            return None
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        try:
            record = state.keys.authenticate(key, "client")
            # Kept for the route's scope check (service/api/deps.py), which then needs no second
            # hash and cache lookup for the same key.
            scope["state"][AUTHENTICATED_KEY] = (key, record)
            return None
        except ServiceError as error:
            refusal = error
        except tuple(UNAVAILABLE_CODES) as error:  # the keys are in the database
            return (*describe_unavailable(error, scope["state"]["request_id"]), [])
        client = scope.get("client")
        address = str(client[0]) if client else "-"
        wait = self.auth_failures.retry_after(address)
        if wait > 0:
            message = f"too many failed authentications from this address; retry in {wait} s"
            return "too_many_requests", message, [(b"retry-after", str(wait).encode())]
        self.auth_failures.record_failure(address)
        return refusal.code, refusal.message, []

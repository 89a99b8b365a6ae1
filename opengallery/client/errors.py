"""The one exception type of the client."""

from __future__ import annotations

from typing import Any

# Codes the client itself gives when no API error body came back.
CONNECTION_ERROR = "connection_error"  # the service could not be reached or dropped the connection
TIMEOUT = "timeout"  # no answer within the timeout (or a job still running at its deadline)
HTTP_ERROR = "http_error"  # an error status whose body is not the API's JSON (e.g. a proxy's page)
INVALID_RESPONSE = "invalid_response"  # a success status with a body the client cannot read


class OpenGalleryError(Exception):
    """A request that did not succeed.

    `status` is the HTTP status (None when no answer came back), `code` the API's
    machine-readable reason (`not_found`, `invalid_image`, ...) or one of the client's own
    (`connection_error`, `timeout`, `http_error`, `invalid_response`), `message` the
    explanation for people, `details` the API's extra data (e.g. per-sample outcomes of an
    enrolment whose samples were all rejected) or None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.code}: {self.message}"
        return f"HTTP {self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"OpenGalleryError(status={self.status!r}, code={self.code!r}, {self.message!r})"

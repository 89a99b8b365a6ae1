"""One error shape for the whole API: `{"error": {"code", "message"}}` with a 4xx status.

Handlers turn validation errors, HTTP exceptions and anything unexpected into that shape; an
unexpected exception is a bug: it is logged with the request id and answered with a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("opengallery.service")


class ApiError(Exception):
    """An error the client caused (or a resource state it must know about)."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def not_found(what: str, name: object) -> ApiError:
    return ApiError(404, "not_found", f"{what} {name!r} does not exist")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def describe_validation(errors: list[Any]) -> str:
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid"))
        parts.append(f"{location}: {message}" if location else message)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def validation_error_response(errors: list[Any]) -> JSONResponse:
    return error_response(422, "validation_error", describe_validation(errors))


async def _api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.code, error.message, error.details)


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return validation_error_response(list(error.errors()))


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    code = _HTTP_CODES.get(status, "error")
    detail = error.detail
    if not isinstance(detail, str) or not detail:
        try:
            detail = HTTPStatus(status).phrase
        except ValueError:
            detail = "error"
    response = error_response(status, code, detail)
    if error.headers:
        response.headers.update(error.headers)
    return response


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    logger.exception("unexpected error (request %s): %r", request_id, error)
    return error_response(500, "internal_error", f"internal error; request id {request_id}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

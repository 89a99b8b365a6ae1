"""One error shape for the whole API: `{"error": {"code", "message"}}` with a 4xx status.

The domain raises `ServiceError(code, message)`; `STATUS_BY_CODE` is the one place that
decides each code's HTTP status. Handlers turn validation errors, HTTP exceptions and anything
unexpected into the same shape; an unexpected exception is a bug: it is logged with the
request id and answered with a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.core.errors import UNAVAILABLE_CODES, ServiceError, insufficient_storage
from service.storage import StoreFullError

logger = logging.getLogger("opengallery.service")


# The one table from error codes (the domain's, and the HTTP wing's own) to HTTP statuses.
STATUS_BY_CODE: dict[str, int] = {
    # the request itself
    "bad_request": 400,
    "request_timeout": 408,
    "headers_too_large": 431,
    "invalid_json": 422,
    "validation_error": 422,
    "invalid_id": 422,
    "invalid_cursor": 422,
    "invalid_limit": 422,
    "invalid_top_k": 422,
    "no_input": 422,
    "unsupported_media_type": 415,
    "payload_too_large": 413,
    "too_many_items": 413,
    "metadata_too_large": 413,
    "method_not_allowed": 405,
    "not_acceptable": 406,
    # who is asking
    "unauthorized": 401,
    "forbidden": 403,
    "too_many_requests": 429,
    # resources and their state
    "not_found": 404,
    "subject_not_found": 404,
    "already_exists": 409,
    "conflict": 409,
    "model_unavailable": 409,
    "model_changed": 409,
    "no_samples": 409,
    "already_on_model": 409,
    "last_admin_key": 409,
    "cannot_migrate": 409,
    "migration_running": 409,
    "target_unsupported_fpir": 409,
    "calibration_required": 409,
    "unknown_model": 422,
    "unsupported_fpir": 422,
    "invalid_bundle": 422,
    "invalid_archive": 422,
    # probes and samples
    "all_samples_rejected": 422,
    "invalid_embedding": 422,
    "invalid_image": 422,
    "truncated_image": 422,
    "empty_image": 422,
    "blank_image": 422,
    "invalid_base64": 422,
    "image_too_large": 413,
    # the server
    "insufficient_storage": 507,
    "too_many_pixels": 413,
    # the service's own dependencies (retry later)
    "database_unavailable": 503,
    "index_unavailable": 503,
    "server_busy": 503,
}
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def status_for(code: str) -> int:
    """The HTTP status of an error code; an unlisted code is a bug (500), caught by a test."""
    return STATUS_BY_CODE.get(code, 500)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status)


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


async def _service_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    response = error_response(status_for(error.code), error.code, error.message, error.details)
    if error.code in {"request_timeout", "payload_too_large"}:
        response.headers["connection"] = "close"  # the rest of the body is not worth reading
    return response


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return validation_error_response(list(error.errors()))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    code = _CODE_BY_STATUS.get(status, "error")
    detail = error.detail
    if not isinstance(detail, str) or not detail:
        try:
            detail = HTTPStatus(status).phrase
        except ValueError:
            detail = "error"
    response = error_response(status, code, detail)
    if error.headers:
        response.headers.update(error.headers)
    if status == 405:
        # The router names the methods of the first route that matched the path only.
        response.headers["allow"] = ", ".join(_allowed_methods(request))
    return response


def describe_unavailable(error: Exception, request_id: str) -> tuple[str, str]:
    """(code, message) for a dependency out of reach; the error, which names the server
    (without credentials), is logged, not shown to the caller."""
    code = next(c for kind, c in UNAVAILABLE_CODES.items() if isinstance(error, kind))
    logger.warning("%s (request %s): %s", code, request_id, error)
    what = "database" if code == "database_unavailable" else "vector index"
    return code, f"the {what} is unavailable; retry later (request id {request_id})"


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    code, message = describe_unavailable(error, getattr(request.state, "request_id", "-"))
    return error_response(status_for(code), code, message)


def _allowed_methods(request: Request) -> list[str]:
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _store_full(request: Request, _: Exception) -> JSONResponse:
    # Writes outside the domain's store_errors() blocks reach here with the same answer.
    return await _service_error(request, insufficient_storage())


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    logger.exception("unexpected error (request %s): %r", request_id, error)
    response = error_response(500, "internal_error", f"internal error; request id {request_id}")
    # The server may not be in a state to keep this connection: say so, so that the client
    # does not reuse it and see it reset.
    response.headers["connection"] = "close"
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StoreFullError, _store_full)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in UNAVAILABLE_CODES:
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(Exception, _unexpected_error)

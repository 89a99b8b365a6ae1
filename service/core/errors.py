"""The domain's errors: a machine-readable code and a message for a person, never an HTTP status.

The HTTP wing owns the one table from codes to statuses (service/api/errors.py); the CLIs and
the tests read the codes. A code names what went wrong, so that one code means one thing
wherever it is raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from service.index import IndexUnavailable
from service.storage import AlreadyExistsError, NotFoundError, StoreFullError, StoreUnavailable

# A dependency the service cannot reach, by the code its requests fail with meanwhile: the
# request may succeed when retried, so these are not the caller's fault (nor a bug).
UNAVAILABLE_CODES: dict[type[Exception], str] = {
    StoreUnavailable: "database_unavailable",
    IndexUnavailable: "index_unavailable",
}


class ServiceError(Exception):
    """An error the caller caused, or a state of a resource the caller must know about."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class StartupError(Exception):
    """The service must not start; str() is one line for the operator, naming what and where."""


def not_found(what: str, name: object) -> ServiceError:
    return ServiceError("not_found", f"{what} {name!r} does not exist")


def invalid(message: str) -> ServiceError:
    return ServiceError("validation_error", message)


@contextmanager
def store_errors() -> Iterator[None]:
    """The store's errors in the domain's words."""
    try:
        yield
    except NotFoundError as error:
        raise not_found(error.what, error.name) from None
    except AlreadyExistsError as error:
        raise ServiceError("already_exists", str(error)) from None
    except StoreFullError:
        raise insufficient_storage() from None


def insufficient_storage() -> ServiceError:
    return ServiceError(
        "insufficient_storage",
        "the server's storage is full: nothing was written; retry once space is freed "
        "(GET /readyz reports it)",
    )

"""The store's errors. They name what went wrong; mapping them to HTTP statuses is the API's job."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class StoreConfigError(StoreError):
    """A database URL that names no backend this build can open."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (at start, or lost while serving). The message names
    the database without its credentials."""


class SchemaVersionError(StoreError):
    """The database holds a schema this build does not know (a later release migrated it)."""


class StoreOpenError(StoreError):
    """The database exists but cannot be opened (corrupt, not a database, unreadable)."""


class StoreFullError(StoreError):
    """A write failed for lack of space (disk or database size limit); nothing was written."""


class AlreadyExistsError(StoreError):
    pass


class StoreConflict(StoreError):
    """The state changed under an operation that expected it not to (e.g. a model switch)."""


class LeaseNotHeld(StoreConflict):
    """A job's lease is held by another process: what depended on holding it was not done."""


class LastAdminKeyError(StoreError):
    """Revoking this key would leave no admin key: nobody could manage the service."""


class NotFoundError(StoreError):
    def __init__(self, what: str, name: object) -> None:
        super().__init__(f"{what} {name!r} does not exist")
        self.what = what
        self.name = name

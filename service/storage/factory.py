"""`open_store(url)`: the one way to open a store, the backend chosen by the URL's scheme.

URLs follow SQLAlchemy's convention: `sqlite:///relative/path` (three slashes: a path relative
to the working directory), `sqlite:////absolute/path` (four: an absolute path), and
`postgresql://user:password@host:port/database` (also `postgres://` and
`postgresql+psycopg://`). A URL never appears in an error with its `user:password@` part.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.storage.errors import StoreConfigError
from service.storage.protocols import Store
from service.storage.sqlite import SQLiteStore
from service.storage.urls import redact_url

SUPPORTED = (
    "sqlite:///relative/path, sqlite:////absolute/path or "
    "postgresql://user:password@host:port/database"
)


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower()
    if not separator or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        # Not echoed: whatever stands before "://" might hold credentials.
        raise StoreConfigError(f"not a database URL (scheme://...); supported: {SUPPORTED}")
    return scheme


def _is_postgres(scheme: str) -> bool:
    return scheme in {"postgresql", "postgres", "postgresql+psycopg"}


def check_postgres_url(url: str) -> None:
    """StoreConfigError unless libpq can parse `url` and psycopg is installed."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        from service.storage.postgres.connection import libpq_url
    except ImportError:
        raise StoreConfigError(
            "postgresql:// databases need psycopg: install opengallery's 'scale' extra"
        ) from None
    try:
        conninfo_to_dict(libpq_url(url))
    except Exception:  # libpq's parse error may quote the password: not shown
        raise StoreConfigError(
            f"not a valid PostgreSQL URL: {redact_url(url)!r}; use "
            "postgresql://user:password@host:port/database"
        ) from None


def sqlite_path(url: str) -> Path:
    """The database file a `sqlite:` URL names; StoreConfigError for anything else."""
    scheme = _scheme(url)
    rest = url.partition("://")[2]
    if scheme != "sqlite":
        raise StoreConfigError(f"unknown database URL scheme {scheme!r}; supported: {SUPPORTED}")
    if not rest.startswith("/"):
        raise StoreConfigError(
            f"a sqlite URL names a file, not a host: {redact_url(url)!r}; use {SUPPORTED}"
        )
    path = rest[1:]
    if "?" in path or "#" in path:
        raise StoreConfigError(f"a sqlite URL takes no query or fragment; use {SUPPORTED}")
    if path in {"", ":memory:"}:
        # Each thread opens its own connection, and each in-memory connection is a separate
        # database: an in-memory store would lose writes between threads.
        raise StoreConfigError(f"a sqlite URL needs a file path; use {SUPPORTED}")
    return Path(path)


def check_database_url(url: str) -> None:
    """Raise StoreConfigError if `open_store` could not open a store for `url`'s scheme
    (the URL's form only: nothing is connected to)."""
    if _is_postgres(_scheme(url)):
        check_postgres_url(url)
    else:
        sqlite_path(url)


def open_store(url: str) -> Store:
    """Open (creating if needed) the store that `url` names.

    `sqlite:///relative/path` or `sqlite:////absolute/path` (SQLAlchemy's convention: the path
    follows the third slash), or `postgresql://user:password@host:port/database` (its schema
    applied on opening). StoreConfigError (one line, naming the supported forms) for any other
    URL; StoreUnavailable if the database cannot be reached; SchemaVersionError if it holds a
    schema newer than this build.
    """
    if _is_postgres(_scheme(url)):
        check_postgres_url(url)
        from service.storage.postgres import PostgresStore

        return PostgresStore(url)
    return SQLiteStore(sqlite_path(url))

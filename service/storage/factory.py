"""`open_store(url)`: the one way to open a store, the backend chosen by the URL's scheme.

URLs follow SQLAlchemy's convention: `sqlite:///relative/path` (three slashes: a path relative
to the working directory) and `sqlite:////absolute/path` (four: an absolute path). A URL never
appears in an error with its `user:password@` part.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.storage.errors import StoreConfigError
from service.storage.protocols import Store
from service.storage.sqlite import SQLiteStore

SUPPORTED = "sqlite:///relative/path or sqlite:////absolute/path"


def redact_url(url: str) -> str:
    """The URL without its `user:password@` part, for messages and logs."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    if rest.startswith("/"):  # no authority part, so no credentials (sqlite:///path)
        return url
    at = rest.rfind("@")  # the last '@': a password may itself hold an unescaped '@'
    return url if at < 0 else f"{head}{separator}{rest[at + 1 :]}"


def sqlite_path(url: str) -> Path:
    """The database file a `sqlite:` URL names; StoreConfigError for anything else."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        # Not echoed: whatever stands before "://" might hold credentials.
        raise StoreConfigError(f"not a database URL (scheme://...); supported: {SUPPORTED}")
    if scheme in {"postgresql", "postgres"} or scheme.startswith("postgresql+"):
        raise StoreConfigError(
            f"{scheme}:// database URLs are not supported by this build (PostgreSQL comes "
            f"later); supported: {SUPPORTED}"
        )
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
    """Raise StoreConfigError if `open_store` could not open a store for `url`'s scheme."""
    sqlite_path(url)


def open_store(url: str) -> Store:
    """Open (creating if needed) the store that `url` names.

    `sqlite:///relative/path` or `sqlite:////absolute/path` (SQLAlchemy's convention: the path
    follows the third slash). StoreConfigError (one line, naming the supported forms) for any
    other URL; `postgresql://` is refused as not supported by this build.
    """
    return SQLiteStore(sqlite_path(url))

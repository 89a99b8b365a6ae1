"""The SQLite backend (the default): `sqlite:///relative/path` or `sqlite:////absolute/path`."""

from service.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]

"""The SQLite store: its parts (one per concern) composed into one `Store`."""

from __future__ import annotations

from service.storage.protocols import Store
from service.storage.sqlite.calibration import SQLiteCalibration
from service.storage.sqlite.changes import SQLiteChanges
from service.storage.sqlite.galleries import SQLiteGalleries
from service.storage.sqlite.jobs import SQLiteJobs
from service.storage.sqlite.keys import SQLiteKeys
from service.storage.sqlite.migrations import SQLiteMigrations
from service.storage.sqlite.models import SQLiteModels
from service.storage.sqlite.samples import SQLiteSamples
from service.storage.sqlite.transfer import SQLiteTransfer


class SQLiteStore(
    SQLiteGalleries,
    SQLiteSamples,
    SQLiteCalibration,
    SQLiteMigrations,
    SQLiteKeys,
    SQLiteModels,
    SQLiteJobs,
    SQLiteTransfer,
    SQLiteChanges,
    Store,
):
    """One SQLite database file in WAL mode; safe to call from many threads, and from several
    processes on one machine (writes are serialised by SQLite's lock)."""

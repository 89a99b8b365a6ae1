"""The PostgreSQL store: its parts (one per concern) composed into one `Store`."""

from __future__ import annotations

import math

import psycopg

from service.storage.errors import StoreUnavailable
from service.storage.postgres.calibration import PostgresCalibration
from service.storage.postgres.changes import PostgresChanges
from service.storage.postgres.connection import _one_line
from service.storage.postgres.galleries import PostgresGalleries
from service.storage.postgres.jobs import PostgresJobs
from service.storage.postgres.keys import PostgresKeys
from service.storage.postgres.migrations import PostgresMigrations
from service.storage.postgres.models import PostgresModels
from service.storage.postgres.samples import PostgresSamples
from service.storage.postgres.transfer import PostgresTransfer
from service.storage.protocols import Store


class PostgresStore(
    PostgresGalleries,
    PostgresSamples,
    PostgresMigrations,
    PostgresCalibration,
    PostgresTransfer,
    PostgresKeys,
    PostgresModels,
    PostgresJobs,
    PostgresChanges,
    Store,
):
    """One PostgreSQL database through a connection pool; safe to call from many threads and
    from many processes (replicas) at once."""

    def space_exhausted(self) -> bool:
        # The server owns its disk: a write it refuses for space is an error of that write.
        return False

    def ping(self, timeout: float) -> None:
        # First a connection of its own: a server that accepts connections and never answers
        # (frozen) would hold a pooled connection's query for good, while connect_timeout
        # bounds a new connection (libpq counts whole seconds, 2 at least). Then one from the
        # pool, since the pool reconnects on its own schedule and requests go through it.
        seconds = max(2, math.ceil(timeout))
        try:
            with psycopg.connect(
                self._pool.conninfo, autocommit=True, connect_timeout=seconds
            ) as connection:
                connection.execute("SELECT 1")
            with self._pool.connection(timeout=timeout) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as error:  # the pool's timeout is one too
            raise StoreUnavailable(
                f"the database at {self.shown_url} is unavailable: {_one_line(error)}"
            ) from None

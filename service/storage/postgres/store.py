"""The PostgreSQL store: its parts (one per concern) composed into one `Store`."""

from __future__ import annotations

from service.storage.postgres.calibration import PostgresCalibration
from service.storage.postgres.changes import PostgresChanges
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

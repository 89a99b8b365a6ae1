"""The store's interface, split by concern; `Store` is all of them together.

The database is the source of truth; the vector index is derived from it. Domain code never
talks to a database directly: it goes through these interfaces, so that another backend
(PostgreSQL) can follow the SQLite one without touching it.
"""

from __future__ import annotations

from abc import abstractmethod

from service.storage.protocols.calibration import CalibrationStore
from service.storage.protocols.changes import ChangeStore
from service.storage.protocols.galleries import GalleryStore
from service.storage.protocols.jobs import JobStore
from service.storage.protocols.keys import KeyStore
from service.storage.protocols.models import ModelStore
from service.storage.protocols.transfer import TransferStore


class Store(
    GalleryStore, CalibrationStore, KeyStore, ModelStore, JobStore, TransferStore, ChangeStore
):
    """Durable state of the service. Implementations must be safe to call from many threads."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def space_exhausted(self) -> bool:
        """True while writes fail for lack of space (StoreFullError).

        Once a write has failed so, each call tries a small write to see whether space is
        back (at most once a second); any successful write ends the state.
        """

    def ping(self, timeout: float) -> None:
        """Raise StoreUnavailable if the database does not answer within `timeout` seconds.

        A database in a file of this machine has no server to lose: the default does nothing.
        """


__all__ = [
    "CalibrationStore",
    "ChangeStore",
    "GalleryStore",
    "JobStore",
    "KeyStore",
    "ModelStore",
    "Store",
    "TransferStore",
]

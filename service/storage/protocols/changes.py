"""The change log: an ordered table of the committed writes that change what a replica holds in
memory (its indexes, calibrations, loaded models and cached keys).

Every such write appends its change in the SAME transaction as the write, so a change is in
the log if and only if its write committed, and in commit order: a reader that has applied
everything up to `seq` never sees a change with a smaller one appear later. Replicas follow
the log (service/core/replication.py); a replica that was away catches up from it.

Seqs grow with commit order and, on SQLite, follow each other without gaps; on PostgreSQL a
gap is rare (a transaction that failed at commit; a crashed server skips a few): a follower at
`seq` that reads a first change other than `seq + 1` may have missed pruned changes, and
reloads its state from the tables instead.

A change names what changed (ids), not the new data: the follower reads the data as the
database holds it when it applies the change, so applying a change twice, or a change that a
later one undid, leaves memory equal to the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager

from service.storage.records import ChangeRecord, GalleryEmbeddings

GALLERY_CREATED = "gallery_created"  # also a gallery imported whole
GALLERY_DELETED = "gallery_deleted"
SUBJECT_PUT = "subject_put"  # subject_pk, subject_id
SUBJECT_DELETED = "subject_deleted"  # subject_pk, subject_id, sample_ids (its samples)
SAMPLES_ADDED = "samples_added"  # sample_ids (of one or many subjects)
SAMPLES_REMOVED = "samples_removed"  # subject_pk, subject_id, sample_ids
CALIBRATION_CHANGED = "calibration_changed"  # the gallery's own calibration set
MODEL_SWITCHED = "model_switched"  # model_id: the gallery's model after a migration
MODEL_REGISTERED = "model_registered"  # model_id
KEY_CREATED = "key_created"  # key_id
KEY_REVOKED = "key_revoked"  # key_id

CHANGE_KINDS = (
    GALLERY_CREATED,
    GALLERY_DELETED,
    SUBJECT_PUT,
    SUBJECT_DELETED,
    SAMPLES_ADDED,
    SAMPLES_REMOVED,
    CALIBRATION_CHANGED,
    MODEL_SWITCHED,
    MODEL_REGISTERED,
    KEY_CREATED,
    KEY_REVOKED,
)


class ChangeStore(ABC):
    """Reading the change log. Safe to call from many threads."""

    @abstractmethod
    def last_change(self) -> int:
        """The `seq` of the newest change (0 when the log is empty)."""

    @abstractmethod
    def changes_after(self, seq: int, limit: int = 1000) -> list[ChangeRecord]:
        """Up to `limit` changes with `seq` greater than `seq`, oldest first."""

    @abstractmethod
    def prune_changes(self, older_than_s: float, limit: int = 10_000) -> int:
        """Delete up to `limit` of the oldest changes older than `older_than_s` seconds, never
        the newest change (a follower behind the pruned part finds the gap after its seq and
        reloads from the tables); how many were deleted."""

    @abstractmethod
    def wait_for_changes(self, seq: int, timeout: float) -> bool:
        """Block until a change newer than `seq` may be in the log, or `timeout` seconds
        passed: True if one may be (the caller reads `changes_after`), False on timeout.
        PostgreSQL wakes on a notification sent when a change commits; SQLite polls."""

    @abstractmethod
    def load_sample_embeddings(
        self, gallery: str, model_id: str, sample_ids: Sequence[int]
    ) -> GalleryEmbeddings:
        """The `model_id` embeddings of those of `sample_ids` that are in the gallery now, by
        sample id, with their subjects (`subjects` names only theirs). NotFoundError for an
        unknown gallery."""

    @abstractmethod
    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold mutex `name` across every process (and thread) on this database until the
        block ends; waits while another holds it. Released when its holder's process dies
        (PostgreSQL: an advisory lock on a connection of the pool; SQLite: an flock on a
        file beside the database). StoreUnavailable if the database cannot be reached."""

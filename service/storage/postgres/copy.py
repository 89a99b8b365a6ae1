"""Copy a SQLite deployment's database into an empty PostgreSQL database, as it is.

Everything is copied with its ids, versions and timestamps (sample ids and key ids are seen
by clients), from one read snapshot of the SQLite file into one PostgreSQL transaction: the
target holds all of it or none of it. The identity sequences then continue after the copied
ids. A target holding anything is refused, and so is a source holding tables or columns this
copy does not know (written by a later release): nothing is left behind silently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg

from service.storage.errors import StoreConfigError, StoreError, StoreUnavailable
from service.storage.postgres.connection import libpq_url
from service.storage.postgres.store import PostgresStore
from service.storage.urls import redact_url

# (table, columns), parents before children; the same names in both schemas.
TABLES: list[tuple[str, tuple[str, ...]]] = [
    (
        "galleries",
        ("id", "name", "model_id", "fpir", "scoring", "keep_images", "version", "created"),
    ),
    ("subjects", ("id", "gallery_id", "subject_id", "metadata", "created", "updated")),
    (
        "samples",
        (
            "id",
            "subject_pk",
            "gallery_id",
            "model_id",
            "source",
            "content_sha256",
            "image",
            "created",
        ),
    ),
    ("embeddings", ("sample_id", "model_id", "dim", "vector")),
    ("calibration_samples", ("id", "gallery_id", "source", "content_sha256", "image", "created")),
    ("calibration_embeddings", ("sample_id", "model_id", "dim", "vector")),
    ("api_keys", ("id", "key_hash", "scope", "name", "created", "last_used")),
    ("models", ("model_id", "path", "created")),
    (
        "jobs",
        (
            "id",
            "kind",
            "gallery",
            "source_model",
            "target_model",
            "status",
            "done",
            "total",
            "error",
            "attempts",
            "created",
            "updated",
        ),
    ),
]
IDENTITY_TABLES = ("galleries", "subjects", "samples", "calibration_samples", "api_keys")
# SQLite's scratch table for its free-space check, the change log (what running replicas
# follow; a replica started on the copy reads the tables themselves) and job leases (held by
# processes of the source, which are stopped): nothing to copy.
SCRATCH_TABLES = {"space_probe", "changes", "job_leases"}
BATCH = 2000  # rows read from SQLite at a time


class TargetNotEmpty(StoreError):
    """The target database already holds data: a copy would mix two deployments."""


@dataclass(frozen=True)
class CopyCounts:
    rows: dict[str, int]

    def summary(self) -> str:
        return ", ".join(f"{count} {table}" for table, count in self.rows.items())


def _sqlite_rows(connection: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> Iterator:
    order = "sample_id, model_id" if columns[0] == "sample_id" else columns[0]
    cursor = connection.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
    while rows := cursor.fetchmany(BATCH):
        yield from rows


def _unknown_data(connection: sqlite3.Connection) -> list[str]:
    """Tables and columns of the SQLite file that this copy would leave behind."""
    known = dict(TABLES)
    unknown = []
    tables = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    for table in tables:
        if table in SCRATCH_TABLES:
            continue
        if table not in known:
            unknown.append(table)
            continue
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
        unknown += [f"{table}.{column}" for column in columns if column not in known[table]]
    return unknown


def _sqlite_sequence(connection: sqlite3.Connection, table: str) -> int:
    """The last id SQLite handed out for an AUTOINCREMENT table (0 if none): ids of rows
    deleted since are not handed out again, on either side of the copy."""
    known = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    if known is None:
        return 0
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return 0 if row is None else int(row[0])


def _converted(table: str, row: tuple) -> tuple:
    if table == "galleries":  # keep_images: SQLite's 0/1 is PostgreSQL's boolean
        return (*row[:5], bool(row[5]), *row[6:])
    return row


def copy_sqlite_to_postgres(
    sqlite_file: Path, target_url: str, progress: Callable[[str, int], None] | None = None
) -> CopyCounts:
    """Copy the SQLite database `sqlite_file` into the empty PostgreSQL database at
    `target_url`. TargetNotEmpty if the target holds anything; StoreUnavailable if it cannot
    be reached; StoreConfigError if the SQLite file does not exist."""
    if not sqlite_file.is_file():
        raise StoreConfigError(f"no SQLite database at {sqlite_file}")
    PostgresStore(target_url).close()  # the target's schema, applied (or refused) as at start
    shown = redact_url(target_url)
    counts: dict[str, int] = {}
    # Read-only, one snapshot (WAL readers see one committed state for a whole transaction).
    source = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True, isolation_level=None)
    try:
        target = psycopg.connect(libpq_url(target_url))
    except psycopg.OperationalError as error:
        source.close()
        raise StoreUnavailable(
            f"cannot reach the database at {shown}: {' '.join(str(error).split())}"
        ) from None
    with closing(source), target:
        source.execute("BEGIN")
        unknown = _unknown_data(source)
        if unknown:
            raise StoreConfigError(
                f"{sqlite_file} holds data this copy does not know ({', '.join(unknown)}): "
                "copy it with the opengallery release that wrote it"
            )
        with target.transaction():
            # Nothing else may write while we copy (a service started too early, a second copy).
            for table, _ in TABLES:
                target.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            held = {
                table: int(target.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # type: ignore[index]
                for table, _ in TABLES
            }
            if any(held.values()):
                found = ", ".join(f"{count} {table}" for table, count in held.items() if count)
                raise TargetNotEmpty(
                    f"the database at {shown} is not empty ({found}): copy into an empty database"
                )
            for table, columns in TABLES:
                count = 0
                with target.cursor().copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                ) as copy:
                    for row in _sqlite_rows(source, table, columns):
                        copy.write_row(_converted(table, row))
                        count += 1
                counts[table] = count
                if progress is not None:
                    progress(table, count)
            for table in IDENTITY_TABLES:
                target.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" GREATEST(COALESCE((SELECT MAX(id) FROM {table}), 0), %s) + 1, false)",
                    (_sqlite_sequence(source, table),),
                )
        source.execute("COMMIT")
    return CopyCounts(counts)

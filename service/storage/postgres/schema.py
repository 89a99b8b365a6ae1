"""The PostgreSQL schema, applied at start from versioned SQL files (`sql/NNNN_name.sql`).

`schema_version` holds one row per file applied. Opening a store applies, in one transaction
under an advisory lock (replicas starting together apply each file once), every file newer
than the database; a database newer than this build (a later release migrated it) is refused:
this build would read tables it does not know.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources

import psycopg

from service.storage.errors import SchemaVersionError

# The advisory lock key that serialises schema changes ("opengallery schema" as an int64).
SCHEMA_LOCK = 0x6F67_5F73_6368_656D


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every schema file, by version."""
    found = []
    for entry in resources.files("service.storage.postgres").joinpath("sql").iterdir():
        match = re.fullmatch(r"(\d{4})_[a-z0-9_]+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _, _ in found]
    assert versions == list(range(1, len(found) + 1)), f"schema files must be 1..N: {versions}"
    return found


SCHEMA_VERSION = len(migrations())


def apply_schema(connection: psycopg.Connection, shown_url: str) -> int:
    """Bring the database to SCHEMA_VERSION (autocommit connection); the version it was at.
    SchemaVersionError, changing nothing, if the database is newer than this build."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the database at {shown_url} has schema version {current}, newer than this "
                f"build of opengallery knows (version {SCHEMA_VERSION}): run the release that "
                "migrated it, or point OPENGALLERY_DATABASE_URL at another database"
            )
        for version, name, script in migrations()[current:]:
            connection.execute(script)  # type: ignore[arg-type]  # a trusted file of ours
            connection.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, name)
            )
    return current


def iso(moment: datetime) -> str:
    """A timestamp as the records carry it: UTC, milliseconds (the SQLite backend's format)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")

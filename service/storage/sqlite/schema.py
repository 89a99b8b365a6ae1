"""The SQLite schema. `CREATE ... IF NOT EXISTS` only: opening an existing database keeps it,
and a database made by an earlier release gains the tables added since (`changes`).

Embeddings live in their own table keyed by (sample, model): a gallery's samples can hold
embeddings of two models while it migrates, and the index of a gallery is built from exactly
one model's rows. A gallery's own calibration set (non-mated probes) follows the same pattern in
`calibration_samples` and `calibration_embeddings`.
"""

from __future__ import annotations

from datetime import UTC, datetime

SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL,
    fpir REAL NOT NULL,
    scoring TEXT NOT NULL,
    keep_images INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    UNIQUE (gallery_id, subject_id)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_pk INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    source TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    image BLOB,
    created TEXT NOT NULL,
    UNIQUE (subject_pk, content_sha256)
);
CREATE INDEX IF NOT EXISTS samples_by_gallery ON samples (gallery_id);
CREATE TABLE IF NOT EXISTS embeddings (
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sample_id, model_id)
);
CREATE TABLE IF NOT EXISTS calibration_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    image BLOB,
    created TEXT NOT NULL,
    UNIQUE (gallery_id, content_sha256)
);
CREATE TABLE IF NOT EXISTS calibration_embeddings (
    sample_id INTEGER NOT NULL REFERENCES calibration_samples(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sample_id, model_id)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    name TEXT,
    created TEXT NOT NULL,
    last_used TEXT
);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    gallery TEXT NOT NULL,
    source_model TEXT NOT NULL,
    target_model TEXT NOT NULL,
    status TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
-- Which process runs a running job, until when (epoch seconds; the processes of one SQLite
-- database share one machine's clock): service/storage/protocols/jobs.py.
CREATE TABLE IF NOT EXISTS job_leases (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
-- The change log replicas follow (service/storage/protocols/changes.py), appended in the
-- transaction of each write it records; AUTOINCREMENT: a seq is never handed out twice.
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    gallery TEXT,
    subject_pk INTEGER,
    subject_id TEXT,
    sample_ids TEXT NOT NULL DEFAULT '[]',
    model_id TEXT,
    key_id INTEGER,
    created TEXT NOT NULL
);
"""

# (table, column, declaration) of columns added since a table's first release; opening an
# older database adds them.
ADDED_COLUMNS = [("api_keys", "last_used", "TEXT")]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

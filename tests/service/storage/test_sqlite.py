"""What only the SQLite backend promises, beyond the contract: its durability settings."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from service.storage import open_store
from service.storage.sqlite import SQLiteStore


def test_wal_mode_full_sync_and_foreign_keys_on_every_connection(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert isinstance(store, SQLiteStore)
    settings: list[tuple[str, int, int]] = []

    def read_settings() -> None:
        connection = store._connection()  # one connection per thread
        settings.append(
            (
                connection.execute("PRAGMA journal_mode").fetchone()[0],
                connection.execute("PRAGMA foreign_keys").fetchone()[0],
                connection.execute("PRAGMA synchronous").fetchone()[0],
            )
        )

    try:
        read_settings()
        other = threading.Thread(target=read_settings)
        other.start()
        other.join()
        assert settings == [("wal", 1, 2), ("wal", 1, 2)]  # synchronous 2 is FULL
    finally:
        store.close()


def test_a_database_made_before_last_used_opens_and_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE api_keys (id INTEGER PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,"
        " scope TEXT NOT NULL, name TEXT, created TEXT NOT NULL)"
    )
    connection.execute(
        "INSERT INTO api_keys (key_hash, scope, name, created) VALUES ('h', 'admin', NULL, 't')"
    )
    connection.commit()
    connection.close()
    store = SQLiteStore(path)
    try:
        record = store.find_api_key("h")
        assert record is not None and record.last_used is None
        store.touch_api_key(record.key_id, "later")
        assert store.list_api_keys()[0].last_used == "later"
    finally:
        store.close()

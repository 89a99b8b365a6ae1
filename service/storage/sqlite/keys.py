"""API keys in SQLite."""

from __future__ import annotations

import sqlite3

from service.storage.errors import AlreadyExistsError, LastAdminKeyError, NotFoundError
from service.storage.protocols.changes import KEY_CREATED, KEY_REVOKED
from service.storage.records import ApiKeyRecord
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now

_COLUMNS = "id, scope, name, created, last_used"


class SQLiteKeys(SQLiteConnection):
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord:
        try:
            with self._write() as connection:
                cursor = connection.execute(
                    "INSERT INTO api_keys (key_hash, scope, name, created) VALUES (?, ?, ?, ?)",
                    (key_hash, scope, name, _now()),
                )
                key_id = int(cursor.lastrowid or 0)
                self._log_change(connection, KEY_CREATED, key_id=key_id)
        except sqlite3.IntegrityError as error:
            raise AlreadyExistsError("an API key with this hash already exists") from error
        record = self.find_api_key(key_hash)
        assert record is not None and record.key_id == key_id
        return record

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = (
            self._connection()
            .execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
            .fetchone()
        )
        return None if row is None else ApiKeyRecord(*row)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = self._connection().execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")
        return [ApiKeyRecord(*row) for row in rows.fetchall()]

    def revoke_api_key(self, key_id: int) -> ApiKeyRecord:
        with self._write() as connection:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError("API key", key_id)
            record = ApiKeyRecord(*row)
            if record.scope == "admin":
                admins = connection.execute(
                    "SELECT COUNT(*) FROM api_keys WHERE scope = 'admin'"
                ).fetchone()[0]
                if admins <= 1:
                    raise LastAdminKeyError(f"API key {key_id} is the only admin key")
            connection.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
            self._log_change(connection, KEY_REVOKED, key_id=key_id)
        return record

    def touch_api_key(self, key_id: int, when: str) -> None:
        with self._write() as connection:
            connection.execute("UPDATE api_keys SET last_used = ? WHERE id = ?", (when, key_id))

    def count_api_keys(self, scope: str | None = None) -> int:
        if scope is None:
            row = self._connection().execute("SELECT COUNT(*) FROM api_keys").fetchone()
        else:
            row = (
                self._connection()
                .execute("SELECT COUNT(*) FROM api_keys WHERE scope = ?", (scope,))
                .fetchone()
            )
        return int(row[0])

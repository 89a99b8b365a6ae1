"""API keys in PostgreSQL."""

from __future__ import annotations

import psycopg

from service.storage.errors import AlreadyExistsError, LastAdminKeyError, NotFoundError
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.schema import iso
from service.storage.protocols.changes import KEY_CREATED, KEY_REVOKED
from service.storage.records import ApiKeyRecord

_COLUMNS = "id, scope, name, created, last_used"


def _key(row: tuple) -> ApiKeyRecord:
    return ApiKeyRecord(int(row[0]), row[1], row[2], iso(row[3]), row[4])


class PostgresKeys(PostgresConnection):
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord:
        try:
            with self._write() as connection:
                row = connection.execute(
                    "INSERT INTO api_keys (key_hash, scope, name) VALUES (%s, %s, %s)"
                    " RETURNING id, scope, name, created, last_used",
                    (key_hash, scope, name),
                ).fetchone()
                assert row is not None
                self._log_change(connection, KEY_CREATED, key_id=int(row[0]))
        except psycopg.errors.UniqueViolation as error:
            raise AlreadyExistsError("an API key with this hash already exists") from error
        assert row is not None
        return _key(row)

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s", (key_hash,))
        return None if row is None else _key(row)

    def list_api_keys(self) -> list[ApiKeyRecord]:
        return [_key(row) for row in self._fetchall(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")]

    def revoke_api_key(self, key_id: int) -> ApiKeyRecord:
        with self._write() as connection:
            # Admin keys are counted under a lock: two revocations cannot leave none.
            connection.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError("API key", key_id)
            record = _key(row)
            if record.scope == "admin":
                admins = connection.execute(
                    "SELECT COUNT(*) FROM api_keys WHERE scope = 'admin'"
                ).fetchone()
                if admins is not None and int(admins[0]) <= 1:
                    raise LastAdminKeyError(f"API key {key_id} is the only admin key")
            connection.execute("DELETE FROM api_keys WHERE id = %s", (key_id,))
            self._log_change(connection, KEY_REVOKED, key_id=key_id)
        return record

    def touch_api_key(self, key_id: int, when: str) -> None:
        with self._write() as connection:
            connection.execute("UPDATE api_keys SET last_used = %s WHERE id = %s", (when, key_id))

    def count_api_keys(self, scope: str | None = None) -> int:
        if scope is None:
            row = self._fetchone("SELECT COUNT(*) FROM api_keys")
        else:
            row = self._fetchone("SELECT COUNT(*) FROM api_keys WHERE scope = %s", (scope,))
        assert row is not None
        return int(row[0])

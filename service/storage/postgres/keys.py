"""API keys in PostgreSQL."""

from __future__ import annotations

import psycopg

from service.storage.errors import AlreadyExistsError
from service.storage.postgres.connection import PostgresConnection
from service.storage.postgres.schema import iso
from service.storage.records import ApiKeyRecord


class PostgresKeys(PostgresConnection):
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord:
        try:
            with self._write() as connection:
                row = connection.execute(
                    "INSERT INTO api_keys (key_hash, scope, name) VALUES (%s, %s, %s)"
                    " RETURNING id, scope, name, created",
                    (key_hash, scope, name),
                ).fetchone()
        except psycopg.errors.UniqueViolation as error:
            raise AlreadyExistsError("an API key with this hash already exists") from error
        assert row is not None
        return ApiKeyRecord(int(row[0]), row[1], row[2], iso(row[3]))

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = self._fetchone(
            "SELECT id, scope, name, created FROM api_keys WHERE key_hash = %s", (key_hash,)
        )
        return None if row is None else ApiKeyRecord(int(row[0]), row[1], row[2], iso(row[3]))

    def count_api_keys(self, scope: str | None = None) -> int:
        if scope is None:
            row = self._fetchone("SELECT COUNT(*) FROM api_keys")
        else:
            row = self._fetchone("SELECT COUNT(*) FROM api_keys WHERE scope = %s", (scope,))
        assert row is not None
        return int(row[0])

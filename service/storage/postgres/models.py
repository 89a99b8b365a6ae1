"""Registered model bundles in PostgreSQL."""

from __future__ import annotations

from service.storage.postgres.connection import PostgresConnection
from service.storage.protocols.changes import MODEL_REGISTERED


class PostgresModels(PostgresConnection):
    def register_model(self, model_id: str, path: str) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO models (model_id, path) VALUES (%s, %s)"
                " ON CONFLICT (model_id) DO UPDATE SET path = excluded.path",
                (model_id, path),
            )
            self._log_change(connection, MODEL_REGISTERED, model_id=model_id)

    def registered_models(self) -> dict[str, str]:
        rows = self._fetchall("SELECT model_id, path FROM models")
        return {str(model_id): str(path) for model_id, path in rows}

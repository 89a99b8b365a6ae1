"""Registered model bundles in SQLite."""

from __future__ import annotations

from service.storage.protocols.changes import MODEL_REGISTERED
from service.storage.sqlite.connection import SQLiteConnection
from service.storage.sqlite.schema import now as _now


class SQLiteModels(SQLiteConnection):
    def register_model(self, model_id: str, path: str) -> None:
        with self._write() as connection:
            connection.execute(
                "INSERT INTO models (model_id, path, created) VALUES (?, ?, ?)"
                " ON CONFLICT (model_id) DO UPDATE SET path = excluded.path",
                (model_id, path, _now()),
            )
            self._log_change(connection, MODEL_REGISTERED, model_id=model_id)

    def registered_models(self) -> dict[str, str]:
        rows = self._connection().execute("SELECT model_id, path FROM models").fetchall()
        return {str(model_id): str(path) for model_id, path in rows}

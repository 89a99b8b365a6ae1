"""API keys: listing, revocation (at once), the cache's bound, last_used writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import cli
from service.core.errors import ServiceError
from service.core.keys import Authenticator, create_key, hash_key
from service.storage import open_store


def test_keys_are_listed_without_secrets_and_revoked_at_once(client: TestClient) -> None:
    created = client.post("/v1/keys", json={"scope": "client", "name": "ci"}).json()
    as_client = {"X-API-Key": created["key"]}
    assert client.get("/v1/galleries", headers=as_client).status_code == 200
    listed = client.get("/v1/keys")
    assert listed.status_code == 200
    keys = {k["key_id"]: k for k in listed.json()["keys"]}
    assert keys[created["key_id"]]["name"] == "ci" and keys[created["key_id"]]["scope"] == "client"
    assert set(keys[created["key_id"]]) == {"key_id", "scope", "name", "created", "last_used"}
    assert created["key"] not in listed.text and hash_key(created["key"]) not in listed.text
    assert client.get("/v1/keys", headers=as_client).status_code == 403
    assert client.delete(f"/v1/keys/{created['key_id']}").status_code == 204
    refused = client.get("/v1/galleries", headers=as_client)
    assert refused.status_code == 401
    assert client.delete(f"/v1/keys/{created['key_id']}").status_code == 404


def test_the_last_admin_key_cannot_be_revoked(client: TestClient) -> None:
    admins = [k for k in client.get("/v1/keys").json()["keys"] if k["scope"] == "admin"]
    assert len(admins) == 1
    response = client.delete(f"/v1/keys/{admins[0]['key_id']}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_admin_key"
    assert client.get("/v1/galleries").status_code == 200
    second = client.post("/v1/keys", json={"scope": "admin"}).json()
    assert client.delete(f"/v1/keys/{admins[0]['key_id']}").status_code == 204
    assert client.get("/v1/galleries").status_code == 401  # the revoked key, at once
    assert client.get("/v1/keys", headers={"X-API-Key": second["key"]}).status_code == 200


class CountingStore:
    """A store that counts `touch_api_key` calls (the rest is the real store)."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.touches: list[int] = []

    def touch_api_key(self, key_id: int, when: str) -> None:
        self.touches.append(key_id)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_key_deleted_in_the_database_stops_working_within_the_cache_period(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    try:
        now = [100.0]
        counting = CountingStore(store)
        keys = Authenticator(counting, cache_seconds=5.0, clock=lambda: now[0])  # type: ignore[arg-type]
        create_key(store, "admin")
        key, record = create_key(store, "client")
        assert keys.authenticate(key, "client") == record
        store.revoke_api_key(record.key_id)  # another process deletes it
        now[0] += 4.9
        assert keys.authenticate(key, "client") == record  # still cached
        now[0] += 0.2
        with pytest.raises(ServiceError) as refused:
            keys.authenticate(key, "client")
        assert refused.value.code == "unauthorized"
    finally:
        store.close()


def test_last_used_is_written_at_most_once_a_minute_per_key(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'keys.sqlite3'}")
    try:
        now = [0.0]
        counting = CountingStore(store)
        keys = Authenticator(counting, clock=lambda: now[0])  # type: ignore[arg-type]
        key, record = create_key(store, "admin")
        for step in range(10):
            now[0] = step * 5.0  # 0 .. 45 s
            keys.authenticate(key, "client")
        _wait_for(lambda: len(counting.touches) == 1)
        now[0] = 61.0
        keys.authenticate(key, "client")
        _wait_for(lambda: len(counting.touches) == 2)
        assert counting.touches == [record.key_id] * 2
    finally:
        store.close()


def test_keys_list_and_revoke_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = str(tmp_path / "data")
    assert cli.keys_main(["create", "--scope", "admin", "--data-dir", data_dir, "--create"]) == 0
    assert cli.keys_main(["create", "--name", "ci\nforged", "--data-dir", data_dir]) == 0
    capsys.readouterr()
    assert cli.keys_main(["list", "--data-dir", data_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["id", "scope", "name", "created", "last_used"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("1", "admin", "-", "never"),
        ("2", "client", "ci\\nforged", "never"),
    ]
    assert cli.keys_main(["revoke", "1", "--data-dir", data_dir]) == 1
    assert "only admin key" in capsys.readouterr().err
    assert cli.keys_main(["revoke", "2", "--data-dir", data_dir]) == 0
    assert cli.keys_main(["revoke", "2", "--data-dir", data_dir]) == 1
    capsys.readouterr()
    assert cli.keys_main(["list", "--data-dir", data_dir]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2

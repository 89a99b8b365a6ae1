"""The service's commands: serve (settings precedence), keys create."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service import cli
from service.api.app import create_app
from service.core.keys import hash_key
from service.settings import Settings
from service.storage.sqlite import SQLiteStore
from service.testing import ServerThread

from .conftest import ADMIN_KEY

HEADERS = {"X-API-Key": ADMIN_KEY}


def test_flags_override_environment_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENGALLERY_PORT", "9001")
    monkeypatch.setenv("OPENGALLERY_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("OPENGALLERY_MAX_TOP_K", "7")
    settings = cli._settings({"port": 9002, "data_dir": None, "host": None})
    assert settings.port == 9002  # flag wins
    assert settings.data_dir == tmp_path / "from-env"  # environment next
    assert settings.max_top_k == 7
    assert settings.host == "127.0.0.1"  # default last


def test_serve_refuses_a_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli.serve_main(["--model", str(tmp_path / "nope"), "--data-dir", str(tmp_path)])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.serve_main(["--port", "99999"]) == 2


def test_keys_create_prints_a_working_key_stored_hashed(
    tmp_path: Path, bundle_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    create = ["create", "--scope", "client", "--data-dir", str(data_dir)]
    assert cli.keys_main([*create, "--create"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("og_") and len(key) > 40
    database = (data_dir / "opengallery.sqlite3").read_bytes()
    assert key.encode() not in database  # only the hash is stored
    store = SQLiteStore(data_dir / "opengallery.sqlite3")
    try:
        record = store.find_api_key(hash_key(key))
        assert record is not None and record.scope == "client"
    finally:
        store.close()
    app = create_app(Settings(data_dir=data_dir, model=bundle_path, admin_key=ADMIN_KEY))
    with ServerThread(app) as server:
        as_client = {"X-API-Key": key}
        assert httpx.get(f"{server.url}/v1/galleries", headers=as_client).status_code == 200
        forbidden = httpx.post(f"{server.url}/v1/galleries", json={"name": "g"}, headers=as_client)
        assert forbidden.status_code == 403
    # The database exists now: no --create needed for the next key.
    assert cli.keys_main(create) == 0
    assert capsys.readouterr().out.strip().startswith("og_")


def test_keys_create_refuses_a_data_dir_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for data_dir in (tmp_path / "mistyped", tmp_path):  # missing, and existing but no database
        assert cli.keys_main(["create", "--data-dir", str(data_dir)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert f"no database at sqlite:///{data_dir}/opengallery.sqlite3" in captured.err
        assert "--create" in captured.err
    assert not (tmp_path / "mistyped").exists()
    assert list(tmp_path.iterdir()) == []


def test_generated_admin_key_is_printed_once(
    tmp_path: Path, bundle_path: Path, capsys: pytest.CaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data", model=bundle_path)
    with ServerThread(create_app(settings)):
        pass
    printed = [line.strip() for line in capsys.readouterr().err.splitlines()]
    keys = [line for line in printed if line.startswith("og_")]
    assert len(keys) == 1
    with ServerThread(create_app(settings)) as server:
        response = httpx.get(f"{server.url}/v1/galleries", headers={"X-API-Key": keys[0]})
        assert response.status_code == 200
    assert not [line for line in capsys.readouterr().err.splitlines() if "og_" in line]

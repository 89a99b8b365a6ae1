"""`opengallery serve` at start: a busy port, a broken database (each test fails before its fix)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from models.bundle import load_bundle
from models.testing import make_random_bundle
from service import cli
from service.api.app import create_app
from service.core.state import open_state
from service.settings import Settings
from service.testing import free_port, wait_ready

from .conftest import ADMIN_KEY, DIM


def _serve_command(port: int, data_dir: Path, model: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from opengallery.cli import main; sys.exit(main())",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--model",
        str(model),
        "--log-level",
        "warning",
    ]


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPENGALLERY_")}


def test_serve_on_a_busy_port_keeps_the_first_admin_key_for_the_next_start(
    tmp_path: Path, bundle_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.serve_main(
            ["--port", str(port), "--data-dir", str(data_dir), "--model", str(bundle_path)]
        )
    err = capsys.readouterr().err
    assert code != 0
    assert "og_" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], err

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _serve_command(port, data_dir, bundle_path),
            env=_environment(),
            stdout=log,
            stderr=log,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process=process)
        # The key is printed (and flushed) during start-up, before /readyz answers.
        keys = [word for word in log_path.read_text().split() if word.startswith("og_")]
        assert len(keys) == 1
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/galleries", headers={"X-API-Key": keys[0]}
        )
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def _serve_refused(data_dir: Path, model: Path) -> list[str]:
    """Start serve in a subprocess that must exit (not serve) with code 2: its stderr lines."""
    process = subprocess.run(
        _serve_command(free_port(), data_dir, model),
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2, process.stderr
    return [line for line in process.stderr.splitlines() if line.strip()]


def _initialise(data_dir: Path, model: Path) -> None:
    open_state(Settings(data_dir=data_dir, model=model, admin_key=ADMIN_KEY)).close()


def test_a_corrupt_database_is_one_line_naming_the_file(tmp_path: Path, bundle_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "opengallery.sqlite3"
    database.write_bytes(b"this is not an SQLite database\n" * 512)
    lines = _serve_refused(data_dir, bundle_path)
    assert len(lines) == 1, lines
    assert str(database) in lines[0] and "Traceback" not in lines[0]


def test_an_emptied_database_in_a_used_data_dir_is_refused_unless_allowed(
    tmp_path: Path, bundle_path: Path
) -> None:
    data_dir = tmp_path / "data"
    _initialise(data_dir, bundle_path)
    database = data_dir / "opengallery.sqlite3"
    for leftover in data_dir.glob("opengallery.sqlite3-*"):
        leftover.unlink()
    database.write_bytes(b"")
    lines = _serve_refused(data_dir, bundle_path)
    assert len(lines) == 1, lines
    assert str(database) in lines[0] and "--allow-empty-database" in lines[0]
    assert database.stat().st_size == 0  # refused before anything was written
    settings = Settings(
        data_dir=data_dir, model=bundle_path, admin_key=ADMIN_KEY, allow_empty_database=True
    )
    open_state(settings).close()
    assert database.stat().st_size > 0


def test_a_fresh_data_dir_starts_without_the_flag(tmp_path: Path, bundle_path: Path) -> None:
    _initialise(tmp_path / "data", bundle_path)
    _initialise(tmp_path / "data", bundle_path)  # and starts again


def test_other_weights_under_the_same_model_id_are_refused(
    tmp_path: Path, bundle_path: Path
) -> None:
    data_dir = tmp_path / "data"
    _initialise(data_dir, bundle_path)
    retrained = tmp_path / "retrained"
    make_random_bundle(retrained, seed=7, embedding_dim=DIM)  # same name and version
    assert load_bundle(retrained).model_id == load_bundle(bundle_path).model_id
    lines = _serve_refused(data_dir, retrained)
    assert len(lines) == 1, lines
    assert "other weights" in lines[0] and "new version" in lines[0]
    # Registering it over HTTP is refused the same way.
    settings = Settings(data_dir=data_dir, model=bundle_path, admin_key=ADMIN_KEY)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/models", json={"path": str(retrained)}, headers={"X-API-Key": ADMIN_KEY}
        )
    assert response.status_code == 409
    assert "another version" in response.json()["error"]["message"]

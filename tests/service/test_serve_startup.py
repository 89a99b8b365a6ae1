"""`opengallery serve` at start: a busy port, a broken database (each test fails before its fix)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service import cli
from service.testing import free_port, wait_ready


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

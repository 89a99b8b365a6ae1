"""Helpers for tests and benchmarks: images, JSON with NaN, and live servers on loopback."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image


def png_bytes(seed: int, size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    """A random PNG (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def json_bytes(payload: Any) -> bytes:
    """JSON that may hold NaN/Infinity (what a careless client sends)."""
    return json.dumps(payload, allow_nan=True).encode("utf-8")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll /readyz until it answers 200 (or the process dies, or the timeout passes)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError as error:
            last_error = error
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last_error}")


def worker_pids(parent: int) -> list[int]:
    """The uvicorn worker processes of `serve --workers` whose supervisor is `parent` (children
    running multiprocessing's spawn entry point, not its resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent_pid = int(stat.rsplit(")", 1)[1].split()[1])
        if parent_pid == parent and b"spawn_main" in command and b"resource_tracker" not in command:
            pids.append(int(entry.name))
    return pids


class ServerProcess:
    """`opengallery serve` in a subprocess on a free loopback port (kill -9 able)."""

    def __init__(
        self,
        data_dir: Path,
        model: Path,
        *,
        admin_key: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.model = model
        self.admin_key = admin_key
        self.env = dict(env or {})
        self.log_path = log_path
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENGALLERY_")}
        environment.update(self.env)
        environment["OPENGALLERY_ADMIN_KEY"] = self.admin_key
        command = [
            sys.executable,
            "-c",
            "import sys; from opengallery.cli import main; sys.exit(main())",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--model",
            str(self.model),
            "--log-level",
            self.log_level,
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)
        wait_ready(self.url, timeout, self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerThread:
    """uvicorn serving an app in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any, *, log_level: str = "warning") -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level=log_level, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

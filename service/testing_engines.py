"""Real database and vector engines for tests and benchmarks, on free loopback ports.

`PostgresServer` runs PostgreSQL 16 from the `pgserver` wheel's binaries (initdb + postgres) in
a temporary directory; `MilvusServer` runs `milvus-lite server` from the `milvus-lite` wheel.
Both bind 127.0.0.1 only, wait until they answer, and are stopped (and their files removed) by
`stop()`. Neither package is needed to run the service: they are test dependencies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from service.testing import free_port

# PostgreSQL refuses to run as root; under root the server runs as this user instead.
UNPRIVILEGED_USER = "nobody"


def _stop(process: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    tree = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            tree += _process_tree(int(child))
    return tree


def postgres_binaries() -> Path:
    """The PostgreSQL programs the pgserver wheel ships (found without importing pgserver,
    whose import sets up a per-user runtime directory we do not use)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PostgreSQL for tests comes from the pgserver wheel: pip install pgserver"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresServer:
    """A throwaway PostgreSQL 16 server: trust authentication for the `postgres` user, fsync off
    (these tests kill clients, never the machine), listening on 127.0.0.1:`port` only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        """The URL of the `postgres` database, as its superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        binaries = postgres_binaries()
        self.directory = Path(tempfile.mkdtemp(prefix="opengallery-postgres-"))
        data = self.directory / "data"
        user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        if user is not None:
            shutil.chown(self.directory, user)
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=user,
            timeout=timeout,
        )
        self._launch(timeout)
        return self

    def _launch(self, timeout: float) -> None:
        assert self.directory is not None
        binaries = postgres_binaries()
        data = self.directory / "data"
        log = self.directory / "postgres.log"
        user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        with open(log, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.directory),
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log_file,
                stderr=log_file,
                user=user,
            )
        self._wait_ready(timeout, log)

    def halt(self) -> None:
        """Shut the server down, keeping its data (an outage); `resume()` brings it back."""
        _stop(self.process, signal.SIGINT, 30.0)

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again: same port, same data."""
        self._launch(timeout)

    def freeze(self) -> None:
        """SIGSTOP the server and its backends: connections are accepted (by the kernel) and
        never answered, as with a hung host. `thaw()` lets it go on."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        assert self.process is not None
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_ready(self, timeout: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"postgres not ready after {timeout}s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT, 30.0)  # SIGINT: PostgreSQL's fast shutdown
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class MilvusServer:
    """`milvus-lite server` on 127.0.0.1:`port`, its data in a temporary directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"milvus://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MilvusServer:
        self.directory = Path(tempfile.mkdtemp(prefix="opengallery-milvus-"))
        self._launch(timeout)
        return self

    def halt(self) -> None:
        """Stop the server, keeping its data (an outage); `resume()` brings it back."""
        _stop(self.process, signal.SIGTERM, 30.0)

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again: same port, same data."""
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        assert self.directory is not None
        log = self.directory / "milvus.log"
        with open(log, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from milvus_lite.cmdline import main; sys.exit(main())",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.directory / "data"),
                ],
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus-lite exited: {log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"milvus-lite not ready after {timeout}s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=f"http://127.0.0.1:{self.port}", timeout=2)
        except Exception:  # not listening yet: pymilvus raises its own connection errors
            return False
        try:
            client.list_collections()
            return True
        except Exception:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM, 30.0)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

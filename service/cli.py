"""Commands of the service extra: `opengallery serve | keys`.

Each `*_main(argv)` returns an exit code (the dispatcher in opengallery/cli.py calls them).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from service.core.logsafe import escape_control
from service.settings import Settings
from service.storage import Store

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def _settings(overrides: dict[str, object]) -> Settings:
    """Flags override the environment (OPENGALLERY_*), which overrides the defaults."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def _settings_or_exit(prog: str, overrides: dict[str, object]) -> Settings | None:
    try:
        return _settings(overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        print(f"{prog}: invalid setting: {problems}", file=sys.stderr)
        return None


def configure_logging(level: str) -> None:
    from service.api.middleware import RequestIdFilter
    from service.core.logsafe import EscapingFormatter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    root = logging.getLogger("opengallery")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event_loop() -> str:
    """uvloop when importable (less server CPU per request, bench/http_stack.py; it has no
    Windows build), else asyncio. The HTTP parser is always httptools (service/api/server.py)."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _startup_problem(settings: Settings) -> str | None:
    """Why the database server or the index server cannot be used (unreachable, a schema of
    another version, a URL this build cannot serve), in one line without credentials; None when
    both open. Checked before anything else starts, so that `serve` stops with that line instead of
    a failed application start-up."""
    from service.index import IndexConfigError, IndexUnavailable, open_index
    from service.storage import StoreError, open_store

    url = settings.effective_database_url
    if not url.lower().startswith("sqlite:"):  # a SQLite file is checked by open_state
        try:
            open_store(url).close()
        except StoreError as error:
            return str(error)
    # An index server is reached; a faiss:// URL only has its options checked (no directory:
    # nothing is read or removed).
    try:
        backend = open_index(settings.index_url, search_threads=settings.search_threads)
    except (IndexConfigError, IndexUnavailable) as error:
        return str(error)
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), as uvicorn binds it; OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery serve",
        description="Run the recognition service. Every flag can also be set in the "
        "environment as OPENGALLERY_<FLAG> (e.g. OPENGALLERY_DATA_DIR); flags win.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="database and data (default ./var)")
    parser.add_argument("--model", type=Path, help="default model bundle (default models/default)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--workers",
        type=int,
        help="processes serving the one port, each a replica of the database (default 1)",
    )
    parser.add_argument(
        "--allow-empty-database",
        action="store_true",
        default=None,
        help="start on a zero-length database file in a data directory used before",
    )
    args = parser.parse_args(list(argv))
    settings = _settings_or_exit(
        "opengallery serve",
        {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "model": args.model,
            "log_level": args.log_level,
            "allow_empty_database": args.allow_empty_database,
            "workers": args.workers,
        },
    )
    if settings is None:
        return 2
    problem = _startup_problem(settings)
    if problem is not None:
        print(f"opengallery serve: {problem}", file=sys.stderr)
        return 1

    from models.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(settings.model)
    except BundleError as error:
        print(f"opengallery serve: cannot load the model bundle: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from service.api.app import create_app
    from service.api.server import uvicorn_options
    from service.core.errors import StartupError
    from service.core.state import open_state

    # Bind before the app starts: its start-up may print a one-time admin key, which must not
    # be shown by a server that then fails to listen (the key would be lost with it).
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as error:
        reason = error.strerror or str(error)
        print(
            f"opengallery serve: cannot listen on {settings.host}:{settings.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _serve_workers(settings, sock, bundle.manifest.model_id)
    try:
        state = open_state(settings)
    except StartupError as error:
        sock.close()
        print(f"opengallery serve: {error}", file=sys.stderr)
        return 2
    shown_host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    loop = event_loop()
    print(
        f"opengallery: serving {bundle.manifest.model_id} on http://{settings.host}:{settings.port}"
        f"  (docs: http://{shown_host}:{settings.port}/docs, data: {settings.data_dir}; "
        f"{loop} + httptools)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        create_app(state=state, freeze_after_start=True),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop=loop,
        access_log=False,  # our middleware logs each request with its request id
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    with sock:
        server.run(sockets=[sock])
    return 0 if server.started else 1  # not started: the app's start-up failed (logged)


# The slot lock of this worker process: open for the process's life (closing it frees the slot).
_held_slot: list[IO[bytes]] = []


def _index_slot(settings: Settings) -> Path:
    """This worker process's own index directory (an index kept on disk, sq8, keeps its row
    files and snapshots there; others leave it empty), claimed for the process's life."""
    from service.core.state import claim_index_slot

    directory, held = claim_index_slot(settings.data_dir)
    _held_slot.append(held)
    logging.getLogger("opengallery.service").info(
        "worker %d: index directory %s", os.getpid(), directory
    )
    return directory


def worker_app() -> object:
    """The app of one worker process of `serve --workers N` (uvicorn imports this factory in
    each worker; the settings come from the environment the parent filled in)."""
    from service.api import server
    from service.api.app import create_app

    settings = Settings()
    configure_logging(settings.log_level)
    server.GuardedHttpToolsProtocol.header_timeout = settings.header_timeout
    server.GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    server.GuardedHttpToolsProtocol.max_connections = settings.max_connections
    return create_app(settings, index_dir=_index_slot(settings), freeze_after_start=True)


def _serve_workers(settings: Settings, sock: socket.socket, model_id: str) -> int:
    """`serve --workers N`: uvicorn's supervisor runs N processes accepting on one socket
    (bound here), restarting one that dies; each opens its own state and follows the change
    log. The admin key is made here, once, before any worker starts."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from service.api.app import announce_admin_key
    from service.api.server import uvicorn_options
    from service.core.errors import StartupError
    from service.core.keys import ensure_admin_key
    from service.core.metrics import MULTIPROC_ENV, fresh_metrics_dir
    from service.core.state import check_not_emptied
    from service.storage import StoreError, open_store

    with sock:
        try:
            check_not_emptied(settings)
            store = open_store(settings.effective_database_url)
        except (StartupError, StoreError) as error:
            print(f"opengallery serve: {error}", file=sys.stderr)
            return 2
        try:
            admin = settings.admin_key.get_secret_value() if settings.admin_key else None
            generated = ensure_admin_key(store, admin)
        finally:
            store.close()
        if generated:
            announce_admin_key(generated)
        # The workers are spawned: they read their settings from this environment.
        for name in ("host", "port", "data_dir", "model", "log_level", "allow_empty_database"):
            os.environ[f"OPENGALLERY_{name.upper()}"] = str(getattr(settings, name))
        os.environ["OPENGALLERY_WORKERS"] = "1"  # each worker is one process
        if not os.environ.get(MULTIPROC_ENV):
            # /metrics, whichever worker answers, must count every worker's requests.
            os.environ[MULTIPROC_ENV] = str(fresh_metrics_dir(settings.data_dir))
        loop = event_loop()
        options = uvicorn_options(settings)
        # By name: each worker imports it (worker_app sets its limits from the settings).
        options["http"] = "service.api.server:GuardedHttpToolsProtocol"
        print(
            f"opengallery: serving {model_id} on http://{settings.host}:{settings.port} with "
            f"{settings.workers} worker processes (data: {settings.data_dir}; {loop} + httptools)",
            file=sys.stderr,
            flush=True,
        )
        config = uvicorn.Config(
            "service.cli:worker_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            loop=loop,
            access_log=False,
            **options,
        )
        Multiprocess(config, sockets=[sock]).run()
    return 0


def keys_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery keys", description="Manage API keys in a service's data directory."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--scope", choices=["admin", "client"], default="client")
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--data-dir", type=Path, help="the service's data dir (default ./var)")
    create.add_argument(
        "--create",
        action="store_true",
        help="start a new database if the data dir holds none (default: refuse)",
    )
    listing = commands.add_parser("list", help="list keys: id, scope, name, created, last used")
    listing.add_argument("--data-dir", type=Path, help="the service's data dir (default ./var)")
    revoke = commands.add_parser(
        "revoke", help="revoke a key by id (a running service stops accepting it within seconds)"
    )
    revoke.add_argument("key_id", type=int, help="the key's id (from `opengallery keys list`)")
    revoke.add_argument("--data-dir", type=Path, help="the service's data dir (default ./var)")
    args = parser.parse_args(list(argv))
    settings = _settings_or_exit("opengallery keys", {"data_dir": args.data_dir})
    if settings is None:
        return 2

    from service.core.keys import create_key
    from service.storage import StoreError, open_store, redact_url
    from service.storage.factory import sqlite_path

    database = redact_url(settings.effective_database_url)
    # A mistyped --data-dir would otherwise get a new, empty database whose keys no running
    # service reads. (A PostgreSQL database is never created here: it must exist.)
    if (
        not getattr(args, "create", False)
        and settings.effective_database_url.lower().startswith("sqlite:")
        and not sqlite_path(settings.effective_database_url).exists()
    ):
        print(
            f"opengallery keys: no database at {database}: give the service's --data-dir "
            "(or OPENGALLERY_DATABASE_URL), or pass --create to start a new one",
            file=sys.stderr,
        )
        return 2
    try:
        store = open_store(settings.effective_database_url)
    except StoreError as error:  # its message names the database
        print(f"opengallery keys: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the database's own errors, permissions
        print(f"opengallery keys: cannot open {database}: {error}", file=sys.stderr)
        return 1
    try:
        if args.command != "create":
            return _list_or_revoke_keys(store, args, database)
        key, record = create_key(store, args.scope, args.name)
    finally:
        store.close()
    print(key)
    print(
        f"created {record.scope} key #{record.key_id} in {database} (shown once; stored hashed)",
        file=sys.stderr,
    )
    return 0


def db_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery db", description="Move a service's database to another engine."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser(
        "copy",
        help="copy a SQLite database into an empty PostgreSQL database (ids, versions, "
        "timestamps, images, embeddings, keys, models and jobs as they are)",
        description="Copy a SQLite database into an empty PostgreSQL database. Stop the "
        "service first: what it writes during the copy is not copied.",
    )
    copy.add_argument("--from", dest="source", required=True, help="sqlite:///path of the source")
    copy.add_argument(
        "--to", dest="target", required=True, help="postgresql://user:password@host/db (empty)"
    )
    args = parser.parse_args(list(argv))

    from service.storage import StoreError, redact_url
    from service.storage.factory import check_postgres_url, sqlite_path

    prog = "opengallery db copy"
    try:
        source = sqlite_path(args.source)
    except StoreError as error:
        print(f"{prog}: --from must be a SQLite database: {error}", file=sys.stderr)
        return 2
    if not args.target.lower().startswith(
        ("postgresql://", "postgres://", "postgresql+psycopg://")
    ):
        print(f"{prog}: --to must be a postgresql:// URL", file=sys.stderr)
        return 2
    try:
        check_postgres_url(args.target)
    except StoreError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2

    from service.storage.postgres.copy import copy_sqlite_to_postgres

    target = redact_url(args.target)
    try:
        counts = copy_sqlite_to_postgres(
            source, args.target, lambda table, rows: print(f"{table}: {rows}", file=sys.stderr)
        )
    except StoreError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    print(f"copied {counts.summary()} from {args.source} to {target}", file=sys.stderr)


def _list_or_revoke_keys(store: Store, args: argparse.Namespace, database: str) -> int:
    from service.core.errors import ServiceError
    from service.core.keys import revoke_key

    if args.command == "list":
        print("id\tscope\tname\tcreated\tlast_used")
        for record in store.list_api_keys():
            name = escape_control(record.name or "-")
            print(
                f"{record.key_id}\t{record.scope}\t{name}\t{record.created}\t"
                f"{record.last_used or 'never'}"
            )
        return 0
    try:
        record = revoke_key(store, args.key_id)
    except ServiceError as error:
        print(f"opengallery keys revoke: {error.message}", file=sys.stderr)
        return 1
    print(
        f"revoked {record.scope} key #{record.key_id} in {database}; a running service stops "
        "accepting it within OPENGALLERY_KEY_CACHE_SECONDS (default 5 s)",
        file=sys.stderr,
    )
    return 0

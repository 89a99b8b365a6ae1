"""Commands of the service extra: `opengallery serve | keys`.

Each `*_main(argv)` returns an exit code (the dispatcher in opengallery/cli.py calls them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings

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

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("opengallery")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def http_stack() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn's "auto" picks: uvloop and httptools when
    importable (about 0.15 ms less server CPU per request, bench/http_stack.py), otherwise
    asyncio and h11, so the service runs without them."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def _startup_problem(settings: Settings) -> str | None:
    """Why the database or the index server cannot be used (unreachable, a schema of another
    version, a URL this build cannot serve), in one line without credentials; None when both
    open. Checked before anything else starts, so that `serve` stops with that line instead of
    a failed application start-up."""
    from service.index import IndexConfigError, IndexUnavailable, open_index
    from service.storage import StoreError, open_store

    try:
        open_store(settings.effective_database_url).close()
    except StoreError as error:
        return str(error)
    try:
        backend = open_index(settings.index_url, search_threads=settings.search_threads)
    except (IndexConfigError, IndexUnavailable) as error:
        return str(error)
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    return None


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
    args = parser.parse_args(list(argv))
    settings = _settings_or_exit(
        "opengallery serve",
        {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "model": args.model,
            "log_level": args.log_level,
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

    configure_logging(settings.log_level)
    shown_host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    loop, http = http_stack()
    print(
        f"opengallery: serving {bundle.manifest.model_id} on http://{settings.host}:{settings.port}"
        f"  (docs: http://{shown_host}:{settings.port}/docs, data: {settings.data_dir}; "
        f"{loop} + {http})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop=loop,
        http=http,
        access_log=False,  # our middleware logs each request with its request id
    )
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
    return 0

"""What only the PostgreSQL backend promises, beyond the contract: its schema versions, and one
clear line without the password when the database is unreachable, newer, or lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import psycopg
import pytest

from service import cli
from service.storage import SchemaVersionError, StoreUnavailable, open_store
from service.storage.postgres import PostgresStore
from service.storage.postgres.schema import SCHEMA_VERSION, migrations
from service.testing import free_port

SECRET = "s3cr3t-pw"


def with_password(url: str) -> str:
    """The same database as user `postgres` with a password (the test server trusts it)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")


def shown(url: str) -> str:
    return url.replace("postgresql://postgres@", "postgresql://")


def applied_versions(url: str) -> list[int]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT version FROM schema_version ORDER BY version")
        return [int(row[0]) for row in rows]


def test_the_schema_files_are_numbered_from_one() -> None:
    assert [version for version, _, _ in migrations()] == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 1


def test_the_schema_is_applied_once_even_by_stores_opening_together(postgres_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait()
            stores.append(PostgresStore(postgres_url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(stores) == 4
        assert applied_versions(postgres_url) == list(range(1, SCHEMA_VERSION + 1))
        stores[0].create_gallery("g", "m@1", 0.01, "max", True)
        assert [g.name for g in stores[3].list_galleries()] == ["g"]  # one database
    finally:
        for store in stores:
            store.close()
    reopened = open_store(postgres_url)  # an up-to-date database opens as it is
    try:
        assert applied_versions(postgres_url) == list(range(1, SCHEMA_VERSION + 1))
        assert [g.name for g in reopened.list_galleries()] == ["g"]
    finally:
        reopened.close()


@pytest.fixture
def newer_database(postgres_url: str) -> str:
    """A database a later release migrated: one schema version past this build's."""
    open_store(postgres_url).close()
    with psycopg.connect(postgres_url) as connection:
        connection.execute(
            "INSERT INTO schema_version (version, name) VALUES (%s, 'from_the_future.sql')",
            (SCHEMA_VERSION + 1,),
        )
    return postgres_url


def test_a_database_of_a_newer_schema_is_refused(newer_database: str) -> None:
    with pytest.raises(SchemaVersionError) as raised:
        open_store(with_password(newer_database))
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message
    assert shown(newer_database) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"(version {SCHEMA_VERSION})" in message
    assert applied_versions(newer_database) == list(range(1, SCHEMA_VERSION + 2))  # untouched


def test_serve_and_keys_refuse_a_newer_schema_in_one_line(
    newer_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("OPENGALLERY_DATABASE_URL", with_password(newer_database))
    assert cli.serve_main([]) == 1
    assert cli.keys_main(["create"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("newer than this build" in line for line in lines)
    assert all(shown(newer_database) in line for line in lines)
    assert SECRET not in err


def test_an_unreachable_database_is_one_line_naming_it_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://admin:{SECRET}@127.0.0.1:{port}/gallery"
    with pytest.raises(StoreUnavailable) as raised:
        open_store(url)
    message = str(raised.value)
    assert "\n" not in message and SECRET not in message
    assert f"cannot reach the database at postgresql://127.0.0.1:{port}/gallery" in message
    monkeypatch.setenv("OPENGALLERY_DATABASE_URL", url)
    assert cli.serve_main([]) == 1
    assert cli.keys_main(["create"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(f"127.0.0.1:{port}/gallery" in line for line in lines)
    assert SECRET not in err


@pytest.fixture
def admin(postgres_admin_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres_admin_url, autocommit=True) as connection:
        yield connection


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def cut_off(admin: psycopg.Connection, database: str) -> None:
    """End every session on `database` (as a restart of the server would)."""
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    )


def test_sessions_lost_under_the_store_are_replaced(
    postgres_url: str, admin: psycopg.Connection
) -> None:
    store = PostgresStore(postgres_url)
    try:
        store.create_gallery("g", "m@1", 0.01, "max", True)
        cut_off(admin, database_of(postgres_url))
        assert store.get_gallery("g") is not None  # a fresh connection, no error
        assert store.put_subject("g", "a", None)[2] == 1
    finally:
        store.close()


def test_a_database_gone_is_unavailable_then_serves_again_without_reopening(
    postgres_url: str, admin: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's log lines, to look for the password
    database = database_of(postgres_url)
    store = PostgresStore(with_password(postgres_url), pool_timeout=1.0)
    try:
        store.create_gallery("g", "m@1", 0.01, "max", True)
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        cut_off(admin, database)
        with pytest.raises(StoreUnavailable) as raised:
            store.put_subject("g", "a", None)
        message = str(raised.value)
        assert "\n" not in message and SECRET not in message
        assert f"the database at {shown(postgres_url)} is unavailable" in message
        with pytest.raises(StoreUnavailable):
            store.get_gallery("g")
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        # The pool reconnects in the background, backing off after its failed attempts.
        for _ in range(30):
            try:
                record = store.get_gallery("g")
                break
            except StoreUnavailable:
                continue
        else:
            pytest.fail("the store did not reconnect")
        assert record is not None and record.version == 0  # the refused write never happened
        assert store.put_subject("g", "a", None)[2] == 1
    finally:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        store.close()
    assert SECRET not in caplog.text

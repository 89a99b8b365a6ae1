"""`open_store(url)`: which URLs open which store, and how the others are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service import cli
from service.settings import Settings
from service.storage import StoreConfigError, StoreError, open_store, redact_url
from service.storage.sqlite import SQLiteStore

SECRET = "s3cr3t-p@ss"


def test_three_slashes_is_a_path_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///nested/dir/db.sqlite3")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path("nested/dir/db.sqlite3")
        store.create_gallery("g", "m@1", 0.01, "max", True)
    finally:
        store.close()
    assert (tmp_path / "nested" / "dir" / "db.sqlite3").is_file()


def test_four_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "db.sqlite3"
    assert str(target).startswith("/")
    store = open_store(f"sqlite:///{target}")  # "sqlite:///" + "/tmp/..." = four slashes
    try:
        assert store.path == target and store.path.is_absolute()
    finally:
        store.close()
    assert target.is_file()


def test_an_existing_database_opens_with_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    first = open_store(url)
    first.create_gallery("g", "m@1", 0.01, "max", True)
    first.close()
    second = open_store(url)
    try:
        assert [gallery.name for gallery in second.list_galleries()] == ["g"]
    finally:
        second.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@host/db",
        "redis://host:6379/0",
        "file:///tmp/db.sqlite3",
        "SQLITE3:///db",
    ],
)
def test_an_unknown_scheme_is_refused_in_one_line_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store(url)
    message = str(raised.value)
    assert "\n" not in message
    assert "unknown database URL scheme" in message
    assert url.split("://")[0].lower() in message
    assert "sqlite:///relative/path" in message and "sqlite:////absolute/path" in message
    assert isinstance(raised.value, StoreError)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://host/db",
        f"postgresql://admin:{SECRET}%zz@host/db",  # libpq would quote the password
        f"postgresql://admin:{SECRET}@host/db?no_such_option=1",
    ],
)
def test_postgresql_urls_libpq_cannot_use_are_refused_without_connecting(url: str) -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store(url)
    assert "\n" not in str(raised.value) and "s3cr3t" not in str(raised.value)
    with pytest.raises(ValidationError):
        Settings(database_url=url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://admin:{SECRET}@db.internal:5432/gallery",
        f"postgres://admin:{SECRET}@db.internal/gallery",
        f"postgresql+psycopg://admin:{SECRET}@db.internal/gallery",
    ],
)
def test_postgresql_urls_are_accepted_by_the_settings(url: str) -> None:
    assert Settings(database_url=url).effective_database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "db.sqlite3",
        "/abs/db.sqlite3",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///x?mode=ro",
    ],
)
def test_urls_that_name_no_file_are_refused(url: str) -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store(url)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://admin:{SECRET}@db.internal/gallery",
        f"sqlite://admin:{SECRET}@host/db.sqlite3",
        f"admin:{SECRET}@db.internal/gallery",
        f"admin:{SECRET}@weird://db.internal/gallery",
    ],
)
def test_a_password_never_appears_in_the_error(url: str) -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store(url)
    assert SECRET not in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    with pytest.raises(ValidationError) as invalid:
        Settings(database_url=url)
    assert "s3cr3t" not in str(invalid.value)


def test_redact_url_drops_user_and_password_only() -> None:
    assert redact_url(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://h:5432/db"
    assert redact_url("postgresql://h/db") == "postgresql://h/db"
    assert redact_url("sqlite:////var/lib/og@2/db.sqlite3") == "sqlite:////var/lib/og@2/db.sqlite3"


def test_settings_default_to_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    assert Settings(data_dir=Path("var")).effective_database_url == (
        "sqlite:///var/opengallery.sqlite3"
    )
    absolute = Settings(data_dir=tmp_path).effective_database_url
    assert absolute == f"sqlite:///{tmp_path}/opengallery.sqlite3"
    assert absolute.startswith("sqlite:////")
    chosen = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    assert Settings(data_dir=tmp_path, database_url=chosen).effective_database_url == chosen
    assert Settings(data_dir=tmp_path, database_url="").database_url is None


def test_keys_create_uses_the_database_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    database = tmp_path / "chosen" / "keys.sqlite3"
    monkeypatch.setenv("OPENGALLERY_DATABASE_URL", f"sqlite:///{database}")
    data_dir = tmp_path / "data"
    assert cli.keys_main(["create", "--data-dir", str(data_dir), "--create"]) == 0
    assert database.is_file() and not (data_dir / "opengallery.sqlite3").exists()
    store = open_store(f"sqlite:///{database}")
    try:
        assert store.count_api_keys("client") == 1
    finally:
        store.close()


def test_commands_refuse_an_unsupported_database_url_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("OPENGALLERY_DATABASE_URL", f"mysql://admin:{SECRET}@db/gallery")
    assert cli.keys_main(["create"]) == 2
    assert cli.serve_main([]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("unknown database URL scheme" in line for line in lines)
    assert "s3cr3t" not in err

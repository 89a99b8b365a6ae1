"""The service's commands: serve (settings precedence), keys create, enroll (resumable)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import cli
from service.app import create_app
from service.auth import hash_key
from service.settings import Settings
from service.storage.sqlite import SQLiteStore
from service.testing import ServerThread, png_bytes

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
    assert cli.keys_main(["create", "--scope", "client", "--data-dir", str(data_dir)]) == 0
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


@pytest.fixture
def server(tmp_path: Path, bundle_path: Path) -> Iterator[ServerThread]:
    app = create_app(Settings(data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY))
    with ServerThread(app) as running:
        httpx.post(f"{running.url}/v1/galleries", json={"name": "g"}, headers=HEADERS)
        yield running


def make_folder(root: Path) -> dict[str, list[Path]]:
    layout = {"José": [1, 2, 3], "ana": [4, 5], "bo": [6]}
    files: dict[str, list[Path]] = {}
    for subject, seeds in layout.items():
        (root / subject).mkdir(parents=True)
        files[subject] = []
        for seed in seeds:
            path = root / subject / f"{seed}.png"
            path.write_bytes(png_bytes(seed))
            files[subject].append(path)
    (root / "ana" / "notes.txt").write_text("not an image, ignored")
    return files


def enroll(server: ServerThread, folder: Path, *extra: str) -> int:
    return cli.enroll_main(
        [
            *("--url", server.url, "--api-key", ADMIN_KEY, "--gallery", "g", "--no-progress"),
            *extra,
            str(folder),
        ]
    )


def sample_counts(server: ServerThread) -> dict[str, int]:
    page = httpx.get(f"{server.url}/v1/galleries/g/subjects", headers=HEADERS).json()
    return {s["subject_id"]: s["sample_count"] for s in page["subjects"]}


def test_enroll_is_resumable_and_reports_rejections(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "people"
    make_folder(folder)
    corrupt = folder / "bo" / "broken.png"
    corrupt.write_bytes(png_bytes(7)[:60])
    # Part of the work was done before (an interrupted earlier run).
    httpx.put(f"{server.url}/v1/galleries/g/subjects/ana", headers=HEADERS)
    httpx.post(
        f"{server.url}/v1/galleries/g/subjects/ana/samples",
        files=[("images", ("4.png", png_bytes(4), "image/png"))],
        headers=HEADERS,
    )
    assert enroll(server, folder, "--workers", "3", "--batch-size", "2") == 1
    out = capsys.readouterr().out
    assert "5 enrolled, 1 already enrolled, 1 rejected, 0 failed" in out
    assert f"rejected: {corrupt}" in out
    assert sample_counts(server) == {"José": 3, "ana": 2, "bo": 1}
    # A rerun sends nothing new; still non-zero while the broken file is there.
    assert enroll(server, folder) == 1
    assert "0 enrolled, 6 already enrolled, 1 rejected" in capsys.readouterr().out
    corrupt.unlink()
    assert enroll(server, folder) == 0
    assert "0 enrolled, 6 already enrolled, 0 rejected, 0 failed" in capsys.readouterr().out
    assert sample_counts(server) == {"José": 3, "ana": 2, "bo": 1}


def test_enroll_errors(server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "people"
    make_folder(folder)
    code = cli.enroll_main(
        ["--url", server.url, "--api-key", ADMIN_KEY, "--gallery", "nope", str(folder)]
    )
    assert code == 1
    assert "not_found" in capsys.readouterr().err
    code = cli.enroll_main(["--url", server.url, "--api-key", "bad", "--gallery", "g", str(folder)])
    assert code == 1
    assert "401" in capsys.readouterr().err
    assert cli.enroll_main(["--api-key", "k", "--gallery", "g", str(tmp_path / "missing")]) == 2
    # The server is gone: every file is reported as failed, exit 1.
    dead = cli.enroll_main(
        [
            *("--url", "http://127.0.0.1:9", "--api-key", "k", "--gallery", "g"),
            *("--retries", "0", str(folder)),
        ]
    )
    assert dead == 1

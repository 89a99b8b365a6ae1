"""`opengallery calibrate` (resumable, progress, per-file rejections), against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opengallery.calibrate import main as calibrate_main
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, png_bytes

from .conftest import ADMIN_KEY

HEADERS = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def server(tmp_path: Path, bundle_path: Path) -> Iterator[ServerThread]:
    app = create_app(Settings(data_dir=tmp_path / "data", model=bundle_path, admin_key=ADMIN_KEY))
    with ServerThread(app) as running:
        # fpir 0.1: the gallery's own set takes effect from 100 probes.
        httpx.post(f"{running.url}/v1/galleries", json={"name": "g", "fpir": 0.1}, headers=HEADERS)
        yield running


def calibrate(server: ServerThread, folder: Path, *extra: str, key: str = ADMIN_KEY) -> int:
    return calibrate_main(
        [
            *("--url", server.url, "--api-key", key, "--gallery", "g", "--no-progress"),
            *extra,
            str(folder),
        ]
    )


def calibration(server: ServerThread) -> dict:
    return httpx.get(f"{server.url}/v1/galleries/g/calibration", headers=HEADERS).json()


def test_calibrate_is_resumable_and_reports_rejections(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "strangers"
    (folder / "camera-2").mkdir(parents=True)
    for seed in range(60):
        (folder / f"{seed:03d}.png").write_bytes(png_bytes(seed))
    for seed in range(60, 110):  # any depth
        (folder / "camera-2" / f"{seed:03d}.jpg").write_bytes(png_bytes(seed))
    (folder / "broken.png").write_bytes(png_bytes(500)[:60])
    (folder / "notes.txt").write_text("not an image, ignored")
    # An interrupted earlier run sent a few already.
    httpx.post(
        f"{server.url}/v1/galleries/g/calibration/samples",
        files=[("images", ("0.png", png_bytes(0), "image/png"))],
        headers=HEADERS,
    )
    assert calibrate(server, folder, "--batch-size", "16", "--workers", "3") == 1
    out = capsys.readouterr().out
    assert "109 added, 1 already in the set, 1 rejected, 0 failed" in out
    assert "rejected: " in out and "broken.png" in out
    assert "answers from its own set: 110 non-mated searches" in out
    assert "fpir 0.1: threshold" in out and "fpir_upper" in out
    state = calibration(server)
    assert (state["source"], state["gallery_set_size"]) == ("gallery", 110)
    # A rerun sends nothing new (the broken file is still rejected).
    (folder / "broken.png").unlink()
    assert calibrate(server, folder) == 0
    assert "0 added, 110 already in the set, 0 rejected, 0 failed" in capsys.readouterr().out
    assert calibration(server)["gallery_set_size"] == 110


def test_calibrate_before_the_set_takes_effect_says_how_many_are_needed(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "few"
    folder.mkdir()
    for seed in range(5):
        (folder / f"{seed}.png").write_bytes(png_bytes(seed))
    assert calibrate(server, folder) == 0
    assert "holds 5 of the 100 probes its fpir 0.1 needs" in capsys.readouterr().out


def test_bad_arguments_and_refusals(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert calibrate(server, tmp_path / "missing") == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert calibrate(server, tmp_path / "empty") == 1
    assert "no images under" in capsys.readouterr().err
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(1))
    client_key = httpx.post(
        f"{server.url}/v1/keys", json={"scope": "client"}, headers=HEADERS
    ).json()["key"]
    assert calibrate(server, folder, key=client_key) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "forbidden" in error, error
    assert (
        calibrate_main(
            [
                "--url",
                server.url,
                "--api-key",
                ADMIN_KEY,
                "--gallery",
                "nope",
                "--no-progress",
                str(folder),
            ]
        )
        == 1
    )
    assert "'nope'" in capsys.readouterr().err

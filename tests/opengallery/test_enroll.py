"""`opengallery enroll` (resumable), against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opengallery.enroll import main as enroll_main
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, png_bytes

from .conftest import ADMIN_KEY

HEADERS = {"X-API-Key": ADMIN_KEY}


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
    return enroll_main(
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
    code = enroll_main(
        ["--url", server.url, "--api-key", ADMIN_KEY, "--gallery", "nope", str(folder)]
    )
    assert code == 1
    assert "not_found" in capsys.readouterr().err
    code = enroll_main(["--url", server.url, "--api-key", "bad", "--gallery", "g", str(folder)])
    assert code == 1
    assert "401" in capsys.readouterr().err
    assert enroll_main(["--api-key", "k", "--gallery", "g", str(tmp_path / "missing")]) == 2
    # The server is gone: every file is reported as failed, exit 1.
    dead = enroll_main(
        [
            *("--url", "http://127.0.0.1:9", "--api-key", "k", "--gallery", "g"),
            *("--retries", "0", str(folder)),
        ]
    )
    assert dead == 1


def test_a_folder_name_the_service_refuses_is_reported_per_file(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "people"
    make_folder(folder)
    bad = folder / "tab\there"  # a control character: not a valid subject id
    bad.mkdir()
    (bad / "1.png").write_bytes(png_bytes(9))
    assert enroll(server, folder) == 1
    out = capsys.readouterr().out
    assert "6 enrolled, 0 already enrolled, 0 rejected, 1 failed" in out
    failed = [line for line in out.splitlines() if line.startswith("  failed: ")]
    # The service's reason, per file: the id is refused, the other folders' images go in.
    assert len(failed) == 1 and str(bad / "1.png") in failed[0] and "printable" in failed[0]
    assert sample_counts(server) == {"José": 3, "ana": 2, "bo": 1}


@pytest.mark.parametrize("url", ["localhost:8000", "localhost://8000", "ftp://host", "http://"])
def test_a_url_without_http_is_refused_in_one_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "people"
    make_folder(folder)
    assert enroll_main(["--url", url, "--api-key", "k", "--gallery", "g", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"got {url!r}" in captured.err and "http:// or https://" in captured.err
    assert "UnsupportedProtocol" not in captured.err and "unsupported protocol" not in captured.err


def test_every_format_the_service_reads_is_enrolled_nested_folders_too(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import io

    from PIL import Image

    folder = tmp_path / "people"
    layout = {
        "ana/a.gif": "GIF",
        "ana/b.BMP": "BMP",
        "ana/c.tiff": "TIFF",
        "ana/d.tif": "TIFF",
        "ana/e.webp": "WEBP",
        "ana/f.ppm": "PPM",
        "bo/2024/summer/g.jpg": "JPEG",
        "bo/2024/h.png": "PNG",
    }
    for seed, (name, image_format) in enumerate(layout.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png_bytes(seed))).convert("RGB").save(path, format=image_format)
    (folder / "bo" / "2024" / "notes.txt").write_text("not an image")
    (folder / "README.md").write_text("outside any subject folder")
    assert enroll(server, folder) == 0
    out = capsys.readouterr().out
    assert "8 enrolled, 0 already enrolled, 0 rejected, 0 failed, 2 skipped (2 subjects" in out
    assert f"skipped: {folder / 'README.md'}: not in a subject folder" in out
    assert f"skipped: {folder / 'bo' / '2024' / 'notes.txt'}: not an image format" in out
    assert sample_counts(server) == {"ana": 6, "bo": 2}


def test_the_image_suffixes_are_those_of_the_formats_the_service_reads() -> None:
    from PIL import Image

    from opengallery.uploads import IMAGE_SUFFIXES
    from service.core.images import ALLOWED_FORMATS

    registered = Image.registered_extensions()
    service_reads = {suffix for suffix, name in registered.items() if name in ALLOWED_FORMATS}
    assert service_reads == IMAGE_SUFFIXES


def test_a_subject_whose_images_are_all_rejected_is_not_left_behind(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "people"
    make_folder(folder)
    for subject in ("ghost", "kept"):
        (folder / subject).mkdir()
        (folder / subject / "broken.png").write_bytes(png_bytes(8)[:60])
    # "kept" existed before this run, empty: not this run's to delete.
    httpx.put(f"{server.url}/v1/galleries/g/subjects/kept", headers=HEADERS)
    assert enroll(server, folder) == 1
    out = capsys.readouterr().out
    assert "6 enrolled, 0 already enrolled, 2 rejected, 0 failed" in out
    assert f"rejected: {folder / 'ghost' / 'broken.png'}" in out
    assert sample_counts(server) == {"José": 3, "ana": 2, "bo": 1, "kept": 0}
    ghost = httpx.get(f"{server.url}/v1/galleries/g/subjects/ghost", headers=HEADERS)
    assert ghost.status_code == 404

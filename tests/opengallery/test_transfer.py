"""Gallery export/import through the client and `opengallery export-gallery / import-gallery`,
against a live server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from opengallery.cli import main as cli_main
from opengallery.client import AsyncClient, Client, OpenGalleryError
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, free_port, png_bytes

from .conftest import ADMIN_KEY, DIM


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.url, ADMIN_KEY) as opened:
        yield opened


def fill(client: Client) -> None:
    client.create_gallery("faces", fpir=0.05, keep_images=True)
    client.put_subject("faces", "José", {"team": "a"})
    client.enroll("faces", "José", images=[png_bytes(1), png_bytes(2)])
    rng = np.random.default_rng(3)
    client.put_subject("faces", "ana")
    client.enroll("faces", "ana", embeddings=rng.standard_normal((2, DIM)))


def identify(client: Client, gallery: str) -> list:
    probes = np.random.default_rng(4).standard_normal((5, DIM))
    result = client.identify(gallery, embeddings=probes, top_k=5)
    return [
        (
            r.decision,
            r.subject_id,
            r.score,
            r.threshold,
            [(c.subject_id, c.score) for c in r.candidates],
        )
        for r in result.results
    ]


def test_client_export_and_import(client: Client, server: ServerThread, tmp_path: Path) -> None:
    fill(client)
    archive = tmp_path / "faces.tar"
    size = client.export_gallery("faces", archive)
    assert size == archive.stat().st_size > 0
    assert not (tmp_path / "faces.tar.part").exists()
    buffer = io.BytesIO()
    assert client.export_gallery("faces", buffer) == size
    assert buffer.getvalue() == archive.read_bytes()
    copy = client.import_gallery(archive, "copy")
    assert (copy.name, copy.subject_count, copy.sample_count) == ("copy", 2, 4)
    assert identify(client, "copy") == identify(client, "faces")
    assert client.get_subject("copy", "José").metadata == {"team": "a"}
    with pytest.raises(OpenGalleryError) as error:
        client.import_gallery(archive.read_bytes())  # its own name, taken
    assert (error.value.status, error.value.code) == (409, "already_exists")
    with pytest.raises(OpenGalleryError) as error:
        client.export_gallery("nope", tmp_path / "nope.tar")
    assert (error.value.status, error.value.code) == (404, "not_found")
    assert not (tmp_path / "nope.tar").exists() and not (tmp_path / "nope.tar.part").exists()

    async def in_async() -> tuple[int, str]:
        async with AsyncClient(server.url, ADMIN_KEY) as async_client:
            target = io.BytesIO()
            written = await async_client.export_gallery("copy", target)
            imported = await async_client.import_gallery(target.getvalue(), "copy3")
            return written, imported.name

    written, name = asyncio.run(in_async())
    assert written > 0 and name == "copy3"
    assert identify(client, "copy3") == identify(client, "faces")


def run(*args: str) -> int:
    return cli_main([*args])


def test_cli_export_and_import(
    client: Client, server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(client)
    common = ["--url", server.url, "--api-key", ADMIN_KEY]
    archive = tmp_path / "out.tar"
    assert run("export-gallery", "faces", "-o", str(archive), *common) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(archive) and "bytes" in captured.err
    assert run("import-gallery", str(archive), "--name", "copy", *common) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "copy"
    assert "2 subjects, 4 samples" in captured.err
    assert identify(client, "copy") == identify(client, "faces")

    # Failures: one line on stderr, a non-zero exit.
    assert run("import-gallery", str(archive), "--name", "copy", *common) == 1
    assert "already exists (409 already_exists)" in capsys.readouterr().err
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(archive.read_bytes()[:1000])
    assert run("import-gallery", str(damaged), "--name", "x", *common) == 1
    err = capsys.readouterr().err
    assert "invalid_archive" in err and len(err.strip().splitlines()) == 1
    assert run("export-gallery", "nope", "-o", str(tmp_path / "n.tar"), *common) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run("import-gallery", str(tmp_path / "missing.tar"), *common) == 2
    assert run("export-gallery", "faces", "-o", str(tmp_path), *common) == 2
    assert run("export-gallery", "faces", "--url", server.url) == 2  # no key
    assert "admin key" in capsys.readouterr().err
    unreachable = f"http://127.0.0.1:{free_port()}"
    code = run(
        "export-gallery",
        "faces",
        "-o",
        str(tmp_path / "u.tar"),
        "--url",
        unreachable,
        "--api-key",
        ADMIN_KEY,
    )
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err
    client_key = client.create_key("client").key
    assert (
        run(
            "export-gallery",
            "faces",
            "-o",
            str(tmp_path / "c.tar"),
            "--url",
            server.url,
            "--api-key",
            client_key,
        )
        == 1
    )
    assert "403" in capsys.readouterr().err

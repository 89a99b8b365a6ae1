"""`opengallery push`: exit status and messages for each outcome, against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.testing import make_random_bundle
from opengallery.client import Client
from opengallery.push import main as push_main
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, free_port, png_bytes

from .conftest import ADMIN_KEY, DIM


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as running:
        yield running


def push(server: ServerThread, *args: str) -> int:
    return push_main([*args, "--url", server.url, "--api-key", ADMIN_KEY, "--no-progress"])


def test_push_outcomes(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_random_bundle(tmp_path / "v2", seed=5, embedding_dim=DIM, version="2")
    assert push(server, str(bundle.path)) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "random@2" and "registered random@2" in captured.err
    # Again: harmless.
    assert push(server, str(bundle.path)) == 0
    assert "already registered" in capsys.readouterr().err
    # Another network under the same name@version: refused, exit 1.
    other = make_random_bundle(tmp_path / "other", seed=6, embedding_dim=DIM, version="2")
    assert push(server, str(other.path)) == 1
    assert "different model file" in capsys.readouterr().err
    # A gallery that cannot migrate: exit 1 with the service's reason.
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY})
    client.post("/v1/galleries", json={"name": "vectors"})
    client.put("/v1/galleries/vectors/subjects/a")
    vector = np.ones(DIM).tolist()
    client.post("/v1/galleries/vectors/subjects/a/samples", json={"embeddings": [vector]})
    assert push(server, str(bundle.path), "--migrate", "vectors") == 1
    assert "cannot_migrate" in capsys.readouterr().err
    assert client.get("/v1/galleries/vectors").json()["model"] == "random@1"
    client.close()


def test_push_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_random_bundle(tmp_path / "b", seed=1, embedding_dim=DIM, version="2")
    assert push_main([str(bundle.path)]) == 2  # no key (the environment is cleaned)
    assert "admin key" in capsys.readouterr().err
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert push_main([str(bundle.path), "--url", unreachable, "--api-key", "k"]) == 1
    assert "cannot reach the service" in capsys.readouterr().err
    assert push_main([str(tmp_path / "missing"), "--api-key", "k"]) == 2
    assert "not a valid bundle" in capsys.readouterr().err


def test_push_migrates_a_gallery_whose_name_needs_quoting(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gallery = "odd ?#% name"
    with Client(server.url, ADMIN_KEY) as client:
        client.create_gallery(gallery)
        client.put_subject(gallery, "a")
        client.enroll(gallery, "a", images=[png_bytes(1), png_bytes(2)])
        bundle = make_random_bundle(tmp_path / "v2", seed=5, embedding_dim=DIM, version="2")
        assert push(server, str(bundle.path), "--migrate", gallery) == 0
        assert f"gallery {gallery!r} now answers with random@2" in capsys.readouterr().err
        assert client.get_gallery(gallery).model == "random@2"


def test_push_refuses_a_url_without_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_random_bundle(tmp_path / "b", seed=1, embedding_dim=DIM, version="2")
    assert push_main([str(bundle.path), "--url", "localhost:8000", "--api-key", "k"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "got 'localhost:8000'" in err and "http://" in err


def test_pushing_a_migration_again_is_harmless(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server.url, ADMIN_KEY) as client:
        client.create_gallery("faces")
        client.put_subject("faces", "a")
        client.enroll("faces", "a", images=[png_bytes(1)])
        bundle = make_random_bundle(tmp_path / "v2", seed=5, embedding_dim=DIM, version="2")
        assert push(server, str(bundle.path), "--migrate", "faces") == 0
        assert "now answers with random@2" in capsys.readouterr().err
        assert push(server, str(bundle.path), "--migrate", "faces") == 0
        captured = capsys.readouterr()
        assert captured.out.strip() == "random@2"
        assert "gallery 'faces' already uses random@2" in captured.err
        assert "already_on_model" not in captured.err
        assert client.get_gallery("faces").model == "random@2"

"""The Dockerfile and docker-compose.yml, validated as far as tools allow without an engine."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _tool(name: str) -> str:
    """A dev tool from this venv (make test does not put the venv on PATH), else from PATH."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _stage(name: str) -> str:
    """The text of one build stage, from its FROM line to the next FROM."""
    match = re.search(rf"^FROM .* AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid() -> None:
    compose = _tool("docker-compose")
    env = {**os.environ, "OPENGALLERY_ADMIN_KEY": "example-key"}
    result = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr


def test_service_image_has_no_torch_and_runs_unprivileged() -> None:
    service = _stage("service")
    build = _stage("service-build")
    assert "ARG EXTRAS=service\n" in build and "'.[${EXTRAS}]'" not in build
    assert '".[${EXTRAS}]"' in build  # the service extra unless a build asks for more
    assert "torch==" not in build and "[train" not in build
    assert "COPY training" not in build, "the service image must not carry the training code"
    assert re.search(r"^USER \d+", service, re.M), "the service must run as a non-root user"
    assert "HEALTHCHECK" in service
    assert "models/default" in service, "the default bundle ships inside the image"
    assert DOCKERFILE.rstrip().rsplit("\nFROM ", 1)[-1].startswith("base AS service"), (
        "the service must be the last stage, so a plain `docker build .` makes it"
    )


def test_training_image_pins_torch() -> None:
    assert "torch==2.13.0" in _stage("training")


def test_compose_keeps_data_on_a_volume_and_requires_the_admin_key() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["opengallery"]
    assert any(volume.endswith(":/data") for volume in service["volumes"])
    assert service["environment"]["OPENGALLERY_ADMIN_KEY"].startswith("${OPENGALLERY_ADMIN_KEY:?")
    assert service["environment"]["OPENGALLERY_DATA_DIR"] == "/data"

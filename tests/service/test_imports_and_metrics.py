"""The service runs without torch or onnx, and /metrics is valid Prometheus text that adds up
over the processes sharing a multiprocess directory."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from service.testing import free_port

from .conftest import ADMIN_KEY, DIM
from .test_serve_startup import _serve_command


def test_service_imports_without_torch_or_onnx() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'onnx', 'training'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import service.api.app, service.cli\n"
        "service.api.app.create_app()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


SAMPLE = re.compile(r'^([a-z_]+)(\{([a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*)\})? (-?[0-9.e+]+|\+Inf)$')
LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def series(key: str) -> str:
    """A series name with its labels in one order (their order has no meaning)."""
    name, _, labels = key.partition("{")
    pairs = sorted(LABEL.findall(labels))
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if pairs else "")


class Samples(dict[str, float]):
    def __getitem__(self, key: str) -> float:
        return super().__getitem__(series(key))


def parse(text: str) -> Samples:
    values = Samples()
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) opengallery_[a-z_]+ ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        assert match.group(1).startswith("opengallery_")
        values[series(line.rsplit(" ", 1)[0])] = float(line.rsplit(" ", 1)[1])
    return values


def test_metrics_count_requests_decisions_and_sizes(client: TestClient) -> None:
    client.post("/v1/galleries", json={"name": "g"})
    client.put("/v1/galleries/g/subjects/a")
    vector = np.eye(DIM)[0]
    client.post("/v1/galleries/g/subjects/a/samples", json={"embeddings": [vector.tolist()]})
    probes = [vector.tolist(), (-vector).tolist(), (-vector).tolist()]
    for _ in range(2):
        client.post("/v1/galleries/g/identify", json={"embeddings": probes})
    client.get("/v1/galleries/missing")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    values = parse(response.text)
    assert values['opengallery_decisions_total{decision="known"}'] == 2
    assert values['opengallery_decisions_total{decision="unknown"}'] == 4
    assert values["opengallery_gallery_samples"] == 1
    assert values["opengallery_gallery_subjects"] == 1
    route = 'method="POST",route="/v1/galleries/{gallery}/identify"'
    assert values[f'opengallery_http_requests_total{{{route},status="200"}}'] == 2
    assert values[f"opengallery_http_request_duration_seconds_count{{{route}}}"] == 2
    assert values[f'opengallery_http_request_duration_seconds_bucket{{{route},le="+Inf"}}'] == 2
    missing = 'method="GET",route="/v1/galleries/{gallery}",status="404"'
    assert values[f"opengallery_http_requests_total{{{missing}}}"] == 1


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_wings_import_only_downwards() -> None:
    """FastAPI and Starlette live in service/api only; the domain, storage and index wings
    never import the HTTP wing; storage and index never import the domain."""
    service = Path(__file__).resolve().parents[2] / "service"
    rules = {
        "core": ("fastapi", "starlette", "service.api"),
        "storage": ("fastapi", "starlette", "service.api", "service.core"),
        "index": ("fastapi", "starlette", "service.api", "service.core", "service.storage"),
    }
    checked = 0
    for wing, forbidden in rules.items():
        for path in (service / wing).rglob("*.py"):
            checked += 1
            bad = {n for n in _imports(path) if n.split(".")[0] in forbidden or n in forbidden}
            bad |= {n for n in _imports(path) for f in forbidden if n.startswith(f + ".")}
            assert not bad, f"{path.relative_to(service)} imports {sorted(bad)}"
    assert checked >= 15
    for path in service.glob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] in {"fastapi", "starlette"}}, path


def test_gallery_names_reach_metrics_only_when_opted_in(settings: Settings) -> None:
    for opted_in in (False, True):
        configured = settings.model_copy(update={"metrics_gallery_labels": opted_in})
        with TestClient(create_app(configured)) as client:
            client.headers["X-API-Key"] = ADMIN_KEY
            client.post("/v1/galleries", json={"name": "secret-gallery"})
            client.put("/v1/galleries/secret-gallery/subjects/a")
            vector = np.eye(DIM)[0].tolist()
            client.post(
                "/v1/galleries/secret-gallery/subjects/a/samples", json={"embeddings": [vector]}
            )
            client.post("/v1/galleries/secret-gallery/identify", json={"embeddings": [vector]})
            text = client.get("/metrics", headers={"X-API-Key": ""}).text
        values = parse(text)
        assert ("secret-gallery" in text) is opted_in
        label = 'gallery="secret-gallery",' if opted_in else ""
        assert values[f'opengallery_decisions_total{{{label}decision="known"}}'] == 1
        samples = '{gallery="secret-gallery"}' if opted_in else ""
        assert values[f"opengallery_gallery_samples{samples}"] == 1


# One service process: enrols `samples` vectors in its own gallery, identifies `identifies`
# times, and prints /metrics if asked; every process writes into PROMETHEUS_MULTIPROC_DIR.
WORKER = f"""
import sys
import numpy as np
from fastapi.testclient import TestClient
from service.api.app import create_app
from service.settings import Settings

data_dir, bundle, samples, identifies, scrape = sys.argv[1:]
settings = Settings(data_dir=data_dir, model=bundle, admin_key="{ADMIN_KEY}")
with TestClient(create_app(settings)) as client:
    client.headers["X-API-Key"] = "{ADMIN_KEY}"
    assert client.post("/v1/galleries", json={{"name": "g"}}).status_code == 201
    vectors = np.eye({DIM})[: int(samples)]
    for i, vector in enumerate(vectors):
        client.put(f"/v1/galleries/g/subjects/s{{i}}")
        response = client.post(
            f"/v1/galleries/g/subjects/s{{i}}/samples", json={{"embeddings": [vector.tolist()]}}
        )
        assert response.status_code == 201, response.text
    probes = [vectors[0].tolist(), (-vectors[0]).tolist()]
    for _ in range(int(identifies)):
        assert client.post("/v1/galleries/g/identify", json={{"embeddings": probes}}).is_success
    if scrape == "scrape":
        print(client.get("/metrics").text, end="")
"""


def test_processes_sharing_a_multiprocess_directory_add_up(
    tmp_path: Path, bundle_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}

    def run(name: str, samples: int, identifies: int, scrape: bool) -> str:
        arguments = [str(samples), str(identifies), "scrape" if scrape else "-"]
        result = subprocess.run(
            [sys.executable, "-c", WORKER, str(tmp_path / name), str(bundle_path), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("a", samples=2, identifies=3, scrape=False)
    text = run("b", samples=1, identifies=4, scrape=True)
    values = parse(text)
    route = 'method="POST",route="/v1/galleries/{gallery}/identify"'
    # counters and histograms: the sum over both processes
    assert values[f'opengallery_http_requests_total{{{route},status="200"}}'] == 3 + 4
    assert values[f"opengallery_http_request_duration_seconds_count{{{route}}}"] == 3 + 4
    assert values[f'opengallery_http_request_duration_seconds_bucket{{{route},le="+Inf"}}'] == 7
    assert values['opengallery_decisions_total{decision="known"}'] == 3 + 4
    assert values['opengallery_decisions_total{decision="unknown"}'] == 3 + 4
    assert values['opengallery_samples_submitted_total{status="enrolled"}'] == 2 + 1
    # the gauges describe what the answering process serves: not added up
    assert values["opengallery_gallery_samples"] == 1
    assert values["opengallery_gallery_subjects"] == 1
    assert values["opengallery_storage_full"] == 0
    assert len(list(shared.iterdir())) >= 2  # one file set per process


def test_a_multiprocess_directory_that_does_not_exist_is_one_line_at_start(
    tmp_path: Path, bundle_path: Path
) -> None:
    missing = tmp_path / "no-such-directory"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENGALLERY_")}
    result = subprocess.run(
        _serve_command(free_port(), tmp_path / "data", bundle_path),
        env={**environment, "PROMETHEUS_MULTIPROC_DIR": str(missing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"PROMETHEUS_MULTIPROC_DIR={missing} is not a directory" in lines[0]

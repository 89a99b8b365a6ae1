"""docker-compose.cluster.yml and its nginx configuration, checked without an engine: the
compose file by docker-compose's own validation and its resolved model, nginx.conf by
parsing it into its blocks and comparing them with the compose file."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

from .test_docker_files import _tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = "docker-compose.cluster.yml"
NGINX_CONF = ROOT / "deploy" / "cluster" / "nginx.conf"
REQUIRED = {
    "OPENGALLERY_ADMIN_KEY": "example-admin-key",
    "OPENGALLERY_DB_PASSWORD": "example-db-password",
    "MINIO_ROOT_PASSWORD": "example-minio-password",
}
ENGINES = ("postgres", "etcd", "minio", "milvus")


def compose(*args: str, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    return subprocess.run(
        [_tool("docker-compose"), "-f", COMPOSE_FILE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**environment, **variables},
    )


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables set)."""
    result = compose("config", "--format", "json", variables=REQUIRED)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def replicas(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in model["services"].items() if n.startswith("opengallery")}


def test_the_cluster_file_is_valid_and_refuses_to_start_without_its_secrets() -> None:
    assert compose("config", "--quiet", variables=REQUIRED).returncode == 0
    for missing in REQUIRED:
        result = compose(
            "config", "--quiet", variables={k: v for k, v in REQUIRED.items() if k != missing}
        )
        assert result.returncode != 0 and f"required variable {missing}" in result.stderr


def test_three_replicas_on_postgresql_and_milvus(model: dict[str, Any]) -> None:
    services = model["services"]
    assert set(services) == {*ENGINES, "nginx", "opengallery-1", "opengallery-2", "opengallery-3"}
    index_urls = set()
    for name, replica in replicas(model).items():
        assert replica["build"]["target"] == "service", name
        assert set(replica["build"]["args"]["EXTRAS"].split(",")) == {"service", "scale"}
        environment = replica["environment"]
        password = REQUIRED["OPENGALLERY_DB_PASSWORD"]
        postgres = services["postgres"]["environment"]
        assert environment["OPENGALLERY_DATABASE_URL"] == (
            f"postgresql://{postgres['POSTGRES_USER']}:{password}@postgres:5432/"
            f"{postgres['POSTGRES_DB']}"
        )
        assert postgres["POSTGRES_PASSWORD"] == password
        # one Milvus, its collections shared by every replica (one collection per gallery)
        index_urls.add(environment["OPENGALLERY_INDEX_URL"])
        assert environment["OPENGALLERY_ADMIN_KEY"] == REQUIRED["OPENGALLERY_ADMIN_KEY"]
        for engine in ("postgres", "milvus"):
            assert replica["depends_on"][engine]["condition"] == "service_healthy", name
        assert "/readyz" in " ".join(replica["healthcheck"]["test"]), name
        assert "ports" not in replica, f"{name} is reached through nginx only"
    assert index_urls == {"milvus://milvus:19530"}


def test_milvus_has_its_etcd_and_minio(model: dict[str, Any]) -> None:
    services = model["services"]
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    environment = milvus["environment"]
    assert environment["ETCD_ENDPOINTS"] == "etcd:2379"
    assert environment["MINIO_ADDRESS"] == "minio:9000"
    minio = services["minio"]["environment"]
    assert environment["MINIO_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert environment["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    for engine in ("etcd", "minio"):
        assert milvus["depends_on"][engine]["condition"] == "service_healthy"


def test_every_service_has_a_health_check_and_the_engines_keep_data_on_volumes(
    model: dict[str, Any],
) -> None:
    declared = set(model["volumes"])
    for name, service in model["services"].items():
        assert service["healthcheck"]["test"], name
        assert service.get("image", "").count(":") == 1 and not service["image"].endswith(
            ":latest"
        ), f"{name}: a pinned image"
    for name in (*ENGINES, *replicas(model)):
        volumes = [v for v in model["services"][name]["volumes"] if v["type"] == "volume"]
        assert volumes and all(v["source"] in declared for v in volumes), name


def test_only_the_load_balancer_is_published_and_on_loopback(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        if name != "nginx":
            assert "ports" not in service, name
    (port,) = model["services"]["nginx"]["ports"]
    assert port["host_ip"] == "127.0.0.1"


# -- nginx.conf --

TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};"'#]+""")


def parse_nginx(text: str) -> list[tuple[str, list[str], list | None]]:
    """nginx's grammar: `name args;` or `name args { ... }`; a list of (name, args, block)."""
    tokens = [t for t in TOKEN.findall(text) if not t.startswith("#")]
    position = 0

    def block(depth: int) -> list[tuple[str, list[str], list | None]]:
        nonlocal position
        statements: list[tuple[str, list[str], list | None]] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                assert words, "an empty statement"
                statements.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                assert words, "a block without a name"
                statements.append((words[0], words[1:], block(depth + 1)))
                words = []
            elif token == "}":
                assert depth > 0 and not words, "unbalanced '}' or missing ';' before it"
                return statements
            else:
                words.append(token)
        assert depth == 0 and not words, "unclosed block or missing ';' at the end"
        return statements

    return block(0)


def find(statements: list, name: str, *args: str) -> list[tuple[str, list[str], list | None]]:
    return [s for s in statements if s[0] == name and s[1][: len(args)] == list(args)]


def directive(statements: list, name: str) -> list[str]:
    (found,) = find(statements, name)
    return found[1]


def test_the_parser_refuses_what_nginx_refuses() -> None:
    for broken in ("http { listen 80 }", "http { listen 80;", "listen 80; }", "events {} x"):
        with pytest.raises(AssertionError):
            parse_nginx(broken)


def test_nginx_balances_the_three_replicas_of_the_compose_file(model: dict[str, Any]) -> None:
    top = parse_nginx(NGINX_CONF.read_text())
    assert find(top, "events")
    ((_, _, http),) = find(top, "http")
    ((_, _, upstream),) = find(http, "upstream", "opengallery")
    servers = {args[0] for _, args, _ in find(upstream, "server")}
    assert servers == {f"{name}:8000" for name in replicas(model)}
    ((_, _, server),) = find(http, "server")
    (listen,) = directive(server, "listen")
    (port,) = model["services"]["nginx"]["ports"]
    assert str(port["target"]) == listen
    ((_, _, root),) = find(server, "location", "/")
    assert directive(root, "proxy_pass") == ["http://opengallery"]
    assert "http_503" in directive(root, "proxy_next_upstream")
    # a replica whose database or Milvus is out of reach answers 503: the next one is tried
    health = next(t for t in model["services"]["nginx"]["healthcheck"]["test"] if "://" in t)
    path = health.split(f":{listen}", 1)[1]
    assert find(server, "location", "=", path), f"nginx answers its own health check {path}"


def test_nginx_accepts_every_body_the_service_accepts() -> None:
    http = find(parse_nginx(NGINX_CONF.read_text()), "http")[0][2]
    (size,) = directive(http, "client_max_body_size")
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", size.lower()).groups()  # type: ignore[union-attr]
    limit = int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    assert limit >= Settings().max_request_bytes

"""The console's files: served from the package under a strict Content-Security-Policy, with
nothing inline and nothing from another host."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fastapi.testclient import TestClient

from service.api.routers.console import CONSOLE_DIR


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def shipped() -> list[str]:
    return sorted(str(p.relative_to(CONSOLE_DIR)) for p in CONSOLE_DIR.rglob("*") if p.is_file())


def test_console_is_served_with_a_strict_policy(client: TestClient) -> None:
    client.headers.pop("X-API-Key")  # the page itself needs no key
    redirect = client.get("/console", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    files = shipped()
    assert {"index.html", "style.css", "js/app.js", "js/api.js"} <= set(files)
    for name in files:
        response = client.get(f"/console/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"] == policy
        assert response.content == (CONSOLE_DIR / name).read_bytes()
    assert client.get("/console/js/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/style.css").headers["content-type"].startswith("text/css")


def test_console_refuses_paths_outside_its_files(client: TestClient) -> None:
    for path in [
        "/console/nope.js",
        "/console/../service/api/app.py",
        "/console/%2e%2e/routers/console.py",
        "/console/js/../../routers/console.py",
        "/console/js",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_nothing_inline_and_nothing_from_elsewhere() -> None:
    parser = _Tags()
    parser.feed((CONSOLE_DIR / "index.html").read_text(encoding="utf-8"))
    assert parser.script_text == []  # every script is a file
    for tag, attributes in parser.tags:
        assert "style" not in attributes, tag
        assert not [name for name in attributes if name.startswith("on")], tag
        if tag == "script":
            assert attributes.get("type") == "module" and attributes.get("src")
        assert tag != "style"
    for name in shipped():
        text = (CONSOLE_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "innerHTML" not in text and "eval(" not in text, name
        assert 'setAttribute("style"' not in text, name


def test_every_module_import_is_a_shipped_file() -> None:
    files = set(shipped())
    for name in files:
        if not name.endswith(".js"):
            continue
        for target in re.findall(
            r"""from\s+["'](\.[^"']+)["']""", (CONSOLE_DIR / name).read_text()
        ):
            resolved = (CONSOLE_DIR / name).parent.joinpath(target).resolve()
            assert str(resolved.relative_to(CONSOLE_DIR)) in files, (name, target)

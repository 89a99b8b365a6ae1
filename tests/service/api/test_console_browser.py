"""The operator console in a real browser: Debian's Chromium, headless, driven by Playwright
against a live server.

Skipped, with the reason repeated loudly at the end of the run, when Chromium or the
`playwright` package is missing. Screenshots go to $OPENGALLERY_ARTIFACTS/console (default:
the test's temporary directory); the path is printed.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, png_bytes

from .conftest import browser_missing, find_chromium

pytestmark = pytest.mark.skipif(
    browser_missing() is not None, reason=f"console browser tests: {browser_missing()}"
)

# Read at import: the tests' autouse fixture clears OPENGALLERY_* variables.
CHROMIUM = find_chromium()
ARTIFACTS = os.environ.get("OPENGALLERY_ARTIFACTS")
WRITE_README_SCREENSHOT = os.environ.get("OPENGALLERY_WRITE_README_SCREENSHOT") == "1"
ADMIN_KEY = "test-admin-key-0123456789"  # tests/service/conftest.py configures it
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as running:
        yield running


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    directory = (Path(ARTIFACTS) if ARTIFACTS else tmp_path) / "console"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {directory}")
    return directory


class Page:
    """A browser page on the console that fails the test on any page error or CSP report."""

    def __init__(self, browser: object, server: ServerThread, **options: object) -> None:
        self.context = browser.new_context(**options)  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.dialogs: list[str] = []
        self.page.on("dialog", self._dialog)
        self.url = server.url

    def _console(self, message: object) -> None:
        text = message.text  # type: ignore[attr-defined]
        # A refused request (a 401, 404, 422 the test provokes) is logged by the browser too.
        if message.type == "error" and not text.startswith("Failed to load resource"):  # type: ignore[attr-defined]
            self.problems.append(f"console error: {text}")

    def _dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    def open(self, path: str = "/console") -> None:
        self.page.goto(self.url + path)

    def log_in(self, key: str) -> None:
        self.page.fill("#login-key", key)
        self.page.press("#login-key", "Enter")

    def close(self) -> None:
        self.context.close()
        assert self.problems == []


def write_png(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_log_in_enrol_identify_and_see_reasons(
    browser: object, server: ServerThread, tmp_path: Path, artefacts: Path
) -> None:
    images = tmp_path / "images"
    alice = [write_png(images / f"alice{i}.png", png_bytes(10 + i)) for i in range(2)]
    blank = write_png(images / "blank.png", blank_png())
    folder = images / "people"
    write_png(folder / "bob" / "b0.png", png_bytes(20))
    write_png(folder / "bob" / "b1.png", png_bytes(21))
    write_png(folder / "carol" / "c0.png", png_bytes(30))
    stranger = write_png(images / "stranger.png", png_bytes(77))

    view = Page(browser, server, viewport={"width": 1280, "height": 900})
    page = view.page
    view.open()
    assert page.url.endswith("/console/")
    page.wait_for_selector("#login-form", state="visible")
    assert not page.is_visible("#boot")  # the scripts ran
    # A wrong key: the API's message, still on the login form.
    view.log_in("not-a-key")
    page.wait_for_selector("#login-message:has-text('401')")
    assert page.is_visible("#login-form")
    view.log_in(ADMIN_KEY)
    page.wait_for_selector("#app:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('opengallery.key')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.text_content("#scope") == "admin key"

    # Create a gallery.
    page.fill("#new-gallery-name", "faces")
    page.fill("#new-gallery-fpir", "0.01")
    page.click("#create-gallery button[type=submit]")
    page.wait_for_selector("tr[data-gallery='faces']")
    # A bad FPIR: the API's message as it is.
    page.fill("#new-gallery-name", "bad")
    page.fill("#new-gallery-fpir", "0.00001")
    page.click("#create-gallery button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "(422 unsupported_fpir)" in page.text_content("#error-text")
    assert "needs at least" in page.text_content("#error-text")

    # Enrol loose images for a typed subject, one of them unusable.
    page.click("#nav a[data-view=enrol]")
    page.fill("#enrol-subject", "alice")
    page.set_input_files("#enrol-files", [str(p) for p in [*alice, blank]])
    page.wait_for_selector("#enrol-summary:has-text('3 / 3')")
    rows = page.query_selector_all("#enrol-results tbody tr")
    outcomes = [(r.query_selector(".outcome").text_content(), r.text_content()) for r in rows]
    assert [o for o, _ in outcomes] == ["enrolled", "enrolled", "rejected"]
    reason = rows[2].query_selector(".reason").text_content()
    expected = reject_reason(server, blank)
    assert reason == expected and reason
    assert page.get_attribute("#enrol-progress", "value") == "3"
    page.screenshot(path=str(artefacts / "enrol.png"), full_page=True)
    # A folder laid out as <subject>/<images>.
    page.set_input_files("#enrol-files-folder", str(folder))
    page.wait_for_selector("#enrol-summary:has-text('3 / 3: 3 enrolled')")
    subjects = [
        c.text_content() for c in page.query_selector_all("#enrol-results tbody tr td:nth-child(2)")
    ]
    assert sorted(subjects) == ["bob", "bob", "carol"]

    # Identify a known probe and a stranger.
    assert api_decision(server, stranger) == "unknown"  # the premise of the check below
    page.click("#nav a[data-view=identify]")
    page.set_input_files("#identify-files", [str(alice[1]), str(stranger), str(blank)])
    page.wait_for_selector("#identify-results .probe >> nth=2")
    cards = page.query_selector_all("#identify-results .probe")
    assert cards[0].query_selector(".decision").text_content() == "known: alice"
    assert cards[1].query_selector(".decision").text_content() == "unknown"
    assert cards[2].query_selector(".decision").text_content() == "refused"
    assert "blank_image" in cards[2].text_content() or "invalid" in cards[2].text_content()
    score = re.search(r"score ([0-9.-]+)", cards[0].text_content())
    assert score and float(score.group(1)) == pytest.approx(1.0, abs=1e-3)
    assert cards[0].query_selector(".scorebar .mark") is not None
    page.screenshot(path=str(artefacts / "identify.png"), full_page=True)

    # Subjects: search by prefix, thumbnails of kept images.
    page.click("#nav a[data-view=subjects]")
    page.wait_for_selector("tr[data-subject='alice']")
    page.fill("#subject-prefix", "b")
    page.press("#subject-prefix", "Enter")
    page.wait_for_selector("tr[data-subject='alice']", state="detached")
    assert [
        r.get_attribute("data-subject") for r in page.query_selector_all("tr[data-subject]")
    ] == ["bob"]
    page.click("tr[data-subject='bob'] button.link")
    page.wait_for_selector(".subject-detail canvas >> nth=1")
    page.screenshot(path=str(artefacts / "subjects.png"), full_page=True)

    # The galleries view, with counts.
    page.click("#nav a[data-view=galleries]")
    row = page.wait_for_selector("tr[data-gallery='faces']")
    cells = [c.text_content() for c in row.query_selector_all("td")]
    assert cells[:3] == ["faces", "random@1", "0.010000"]
    assert cells[5:7] == ["3", "5"]  # subjects alice, bob, carol; five samples
    page.screenshot(path=str(artefacts / "galleries.png"), full_page=True)

    # A key that stops working (expired or revoked) returns to the login form.
    page.evaluate("sessionStorage.setItem('opengallery.key', 'revoked-key')")
    page.click("#nav a[data-view=models]")
    page.wait_for_selector("#login-form", state="visible")
    assert "refused the key" in page.text_content("#login-message")
    assert page.evaluate("sessionStorage.getItem('opengallery.key')") is None
    view.close()


def test_a_client_key_sees_what_it_may_do_and_phones_fit(
    browser: object, server: ServerThread, artefacts: Path
) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        client_key = admin.post("/v1/keys", json={"scope": "client"}).json()["key"]
        admin.post("/v1/galleries", json={"name": "faces"})
        admin.put("/v1/galleries/faces/subjects/alice")
        admin.post(
            "/v1/galleries/faces/subjects/alice/samples",
            files=[("images", ("a.png", png_bytes(1)))],
        )
    view = Page(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = view.page
    view.open()
    view.log_in(client_key)
    page.wait_for_selector("tr[data-gallery='faces']")
    assert page.text_content("#scope") == "client key"
    assert not page.is_visible("#nav a[data-view=keys]")
    assert not page.is_visible("#create-gallery")
    assert not page.is_visible("tr[data-gallery='faces'] button.danger")
    # Nothing is wider than the phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(artefacts / "phone-galleries.png"), full_page=True)
    page.click("#nav a[data-view=identify]")
    page.wait_for_selector("#identify-files", state="attached")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    view.close()


def reject_reason(server: ServerThread, image: Path) -> str:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        admin.put("/v1/galleries/faces/subjects/reason-check")
        answer = admin.post(
            "/v1/galleries/faces/subjects/reason-check/samples",
            files=[("images", (image.name, image.read_bytes()))],
        )
        admin.delete("/v1/galleries/faces/subjects/reason-check")
    return answer.json()["error"]["details"]["samples"][0]["reason"]


def api_decision(server: ServerThread, image: Path) -> str:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        answer = admin.post(
            "/v1/galleries/faces/identify", files=[("images", (image.name, image.read_bytes()))]
        )
    return answer.json()["results"][0]["decision"]


REPO = Path(__file__).resolve().parents[3]


def test_the_readme_example_in_the_console(
    browser: object, tmp_path: Path, artefacts: Path
) -> None:
    """The README's digits in the console, with the shipped model: a "three" is recognised, an
    "eight" is unknown. Its screenshot is docs/console.png (written there when
    OPENGALLERY_WRITE_README_SCREENSHOT=1)."""
    settings = Settings(
        data_dir=tmp_path / "data", model=REPO / "models" / "default", admin_key=ADMIN_KEY
    )
    with ServerThread(create_app(settings)) as server:
        view = Page(browser, server, viewport={"width": 1100, "height": 720})
        page = view.page
        view.open()
        view.log_in(ADMIN_KEY)
        page.fill("#new-gallery-name", "demo")
        page.click("#create-gallery button[type=submit]")
        page.wait_for_selector("tr[data-gallery='demo']")
        page.click("#nav a[data-view=enrol]")
        page.set_input_files("#enrol-files-folder", str(REPO / "examples" / "gallery"))
        page.wait_for_selector("#enrol-summary:has-text('18 / 18: 18 enrolled')")
        page.click("#nav a[data-view=identify]")
        probes = REPO / "examples" / "probes"
        page.set_input_files(
            "#identify-files", [str(probes / "three.png"), str(probes / "eight.png")]
        )
        page.wait_for_selector("#identify-results .probe >> nth=1")
        decisions = [
            d.text_content() for d in page.query_selector_all("#identify-results .decision")
        ]
        assert decisions == ["known: three", "unknown"]
        page.screenshot(path=str(artefacts / "readme-identify.png"))
        if WRITE_README_SCREENSHOT:
            page.screenshot(path=str(REPO / "docs" / "console.png"))
        # The shipped bundle's manifest metrics, flattened.
        page.click("#nav a[data-view=models]")
        model_row = page.wait_for_selector("tr[data-model] details")
        model_row.query_selector("summary").click()
        manifest = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
        accuracy = manifest["metrics"]["closed_world"]["closed_set_accuracy"]
        assert f"closed_world.closed_set_accuracy: {accuracy:.4f}" in model_row.text_content()
        view.close()


def test_models_view_migrates_a_gallery_and_follows_the_job(
    browser: object, server: ServerThread, tmp_path: Path, artefacts: Path
) -> None:
    from models.testing import make_random_bundle

    bundle = make_random_bundle(tmp_path / "v2", seed=5, embedding_dim=16, version="2")
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        admin.post("/v1/galleries", json={"name": "faces", "keep_images": True})
        for number in range(3):
            admin.put(f"/v1/galleries/faces/subjects/s{number}")
            admin.post(
                f"/v1/galleries/faces/subjects/s{number}/samples",
                files=[("images", ("a.png", png_bytes(40 + number)))],
            )
    view = Page(browser, server, viewport={"width": 1280, "height": 900})
    page = view.page
    view.open()
    view.log_in(ADMIN_KEY)
    page.wait_for_selector("tr[data-gallery='faces']")
    page.click("#nav a[data-view=models]")
    # A path that is no bundle: the service's reason, as it is.
    page.fill("#register-path", str(tmp_path / "nothing"))
    page.click("form:has(#register-path) button")
    page.wait_for_selector("#error:not([hidden])")
    assert "(422 invalid_bundle)" in page.text_content("#error-text")
    page.fill("#register-path", str(bundle.path))
    page.click("form:has(#register-path) button")
    page.wait_for_selector("tr[data-model='random@2']")
    assert page.text_content("tr[data-model='random@1'] td:last-child") == "none"  # no metrics
    page.select_option("#migrate-gallery", "faces")
    page.select_option("#migrate-model", "random@2")
    page.click("form:has(#migrate-model) button")
    page.wait_for_selector("#migrate-status.ok")
    assert "succeeded, 3 / 3 samples re-embedded (random@1 → random@2)" in page.text_content(
        "#migrate-status"
    )
    assert page.get_attribute("#migrate-progress", "value") == "3"
    page.screenshot(path=str(artefacts / "models.png"), full_page=True)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        assert admin.get("/v1/galleries/faces").json()["model"] == "random@2"
    # Deleting a gallery asks first, naming what goes with it.
    page.click("#nav a[data-view=galleries]")
    page.click("tr[data-gallery='faces'] button.danger")
    page.wait_for_selector("tr[data-gallery='faces']", state="detached")
    assert view.dialogs == [
        'Delete gallery "faces" with its 3 subjects and 3 samples? This cannot be undone.'
    ]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        assert admin.get("/v1/galleries/faces").status_code == 404
    view.close()


def test_keys_view_lists_creates_and_revokes_through_the_api(
    browser: object, server: ServerThread, artefacts: Path
) -> None:
    """The keys view against the real API: it lists the keys, revokes one, and the service
    then refuses that key."""
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        created = admin.post("/v1/keys", json={"scope": "client", "name": "kiosk"}).json()
    key_id = created["key_id"]
    view = Page(browser, server, viewport={"width": 1280, "height": 900})
    page = view.page
    view.open()
    view.log_in(ADMIN_KEY)
    page.click("#nav a[data-view=keys]")
    row = page.wait_for_selector(f"tr[data-key-id='{key_id}']")
    assert "kiosk" in row.text_content()
    with page.expect_response(lambda response: response.request.method == "DELETE"):
        page.click(f"tr[data-key-id='{key_id}'] button.danger")
    page.screenshot(path=str(artefacts / "keys.png"), full_page=True)
    view.close()
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        listed = {key["key_id"] for key in admin.get("/v1/keys").json()["keys"]}
    assert key_id not in listed
    refused = httpx.get(f"{server.url}/v1/galleries", headers={"X-API-Key": created["key"]})
    assert refused.status_code == 401


def test_export_and_import_a_gallery_in_the_console(
    browser: object, server: ServerThread, tmp_path: Path
) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        admin.post("/v1/galleries", json={"name": "faces"})
        admin.put("/v1/galleries/faces/subjects/alice", json={"metadata": {"desk": 4}})
        admin.post(
            "/v1/galleries/faces/subjects/alice/samples",
            files=[("images", ("a.png", png_bytes(1)))],
        )
    view = Page(browser, server, viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = view.page
    view.open()
    view.log_in(ADMIN_KEY)
    page.wait_for_selector("tr[data-gallery='faces']")
    with page.expect_download() as download_info:
        page.click("tr[data-gallery='faces'] >> text=Export")
    download = download_info.value
    assert download.suggested_filename == "faces.tar"
    archive = tmp_path / "faces.tar"
    download.save_as(str(archive))
    page.set_input_files("#import-archive", str(archive))
    page.fill("#import-name", "faces-copy")
    page.click("form:has(#import-archive) button")
    row = page.wait_for_selector("tr[data-gallery='faces-copy']")
    cells = [c.text_content() for c in row.query_selector_all("td")]
    assert cells[5:7] == ["1", "1"]
    # The same archive again under a taken name: the API's refusal, as it is.
    page.set_input_files("#import-archive", str(archive))
    page.fill("#import-name", "faces")
    page.click("form:has(#import-archive) button")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error-text") == "gallery 'faces' already exists (409 already_exists)"
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        copied = admin.get("/v1/galleries/faces-copy/subjects/alice").json()
    assert copied["metadata"] == {"desk": 4} and len(copied["samples"]) == 1
    view.close()


def test_calibration_view_draws_the_services_own_scores(
    browser: object, server: ServerThread
) -> None:
    """The calibration view against the real API: it asks for ?scores=true and the service's
    answer carries the scores it draws."""
    vectors = [[1.0 if j == i else 0.0 for j in range(16)] for i in range(4)]  # unit, DIM 16
    with httpx.Client(base_url=server.url, headers={"X-API-Key": ADMIN_KEY}) as admin:
        admin.post("/v1/galleries", json={"name": "faces", "fpir": 0.05})
        admin.put("/v1/galleries/faces/subjects/ana")
        enrolled = admin.post(
            "/v1/galleries/faces/subjects/ana/samples", json={"embeddings": vectors}
        )
        assert enrolled.status_code == 201, enrolled.text
    view = Page(browser, server, viewport={"width": 1280, "height": 900})
    page = view.page
    with page.expect_response(re.compile(r".*/v1/galleries/faces/calibration\?")) as answer:
        view.open()
        view.log_in(ADMIN_KEY)
        page.wait_for_selector("tr[data-gallery='faces']")
        page.click("#nav a[data-view=calibration]")
    response = answer.value
    assert response.url.endswith("/v1/galleries/faces/calibration?scores=true")
    body = response.json()
    assert len(body["scores"]) == body["size"] == 2000  # the bundle's strangers
    page.wait_for_selector("#calibration-histogram[width]")
    assert "no per-stranger scores" not in page.text_content("#view")
    # The threshold for the gallery's FPIR is drawn in red where it falls between the
    # smallest and the largest score: find red pixels in that column of the canvas.
    scores = body["scores"]
    threshold = next(p["threshold"] for p in body["thresholds"] if p["fpir"] == 0.05)
    red_columns = page.evaluate(
        """() => {
          const canvas = document.getElementById('calibration-histogram');
          const g = canvas.getContext('2d');
          const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
          const reds = new Set();
          for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) {
            const i = 4 * (y * canvas.width + x);
            if (data[i] > 150 && data[i + 1] < 80 && data[i + 2] < 80) reds.add(x);
          }
          return [...reds].sort((a, b) => a - b);
        }"""
    )
    width = page.evaluate("document.getElementById('calibration-histogram').width")
    ratio = page.evaluate("window.devicePixelRatio")
    plot_left, plot_width = 40 * ratio, width - 50 * ratio
    low, high = min(scores), max(scores)
    expected = plot_left + (threshold - low) / (high - low) * plot_width
    assert red_columns and min(abs(x - expected) for x in red_columns) <= 3 * ratio
    view.close()

"""opengallery.client against a real server (sync and async), and its retry rules."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from models.testing import make_random_bundle
from opengallery.client import AsyncClient, BulkItem, Client, OpenGalleryError
from service.api.app import create_app
from service.settings import Settings
from service.testing import ServerThread, free_port, png_bytes

from .conftest import ADMIN_KEY, DIM

# Ids that need quoting in a URL path; none has a '/', which no id may hold.
ODD_IDS = ["José", "a b", "50%", "a?b#c"]


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(settings)) as running:
        yield running


async def result(value: Any) -> Any:
    """The value of a sync client's call, or the awaited value of an async client's."""
    return await value if inspect.isawaitable(value) else value


async def collect(items: Any) -> list[Any]:
    if hasattr(items, "__aiter__"):
        return [item async for item in items]
    return list(items)


def unit(index: int) -> list[float]:
    return np.eye(DIM)[index].tolist()


async def every_method(url: str, tmp_path: Path, kind: str) -> None:
    client: Client | AsyncClient = (Client if kind == "sync" else AsyncClient)(url, ADMIN_KEY)
    r = result
    assert (await r(client.health())).status == "ok"
    readiness = await r(client.ready())
    assert readiness.ready and readiness.models == ["random@1"]

    # Galleries, with a name that needs quoting.
    gallery = "odd a?b#c 50%"
    created = await r(client.create_gallery(gallery, fpir=0.1, keep_images=True))
    assert (created.name, created.model, created.fpir, created.scoring) == (
        gallery,
        "random@1",
        0.1,
        "max",
    )
    mean = await r(client.create_gallery("mean", scoring="mean", model="random@1"))
    assert mean.scoring == "mean" and mean.keep_images is True
    assert (await r(client.get_gallery(gallery))).fpir == 0.1
    assert sorted(g.name for g in await r(client.list_galleries())) == sorted([gallery, "mean"])

    # Subjects with odd ids round-trip.
    for index, subject_id in enumerate(ODD_IDS):
        first = await r(client.put_subject(gallery, subject_id, {"index": index}))
        assert (first.subject_id, first.metadata, first.new) == (subject_id, {"index": index}, True)
    again = await r(client.put_subject(gallery, "José", {"team": "blue"}))
    assert again.new is False and again.metadata == {"team": "blue"}
    kept = await r(client.put_subject(gallery, "José"))
    assert kept.metadata == {"team": "blue"}  # no metadata keeps it

    # Enrolment: images as a path, bytes and a binary file; embeddings (numpy) elsewhere.
    images = [png_bytes(seed) for seed in (1, 2, 3)]
    path = tmp_path / f"{kind}.png"
    path.write_bytes(images[0])
    enrolment = await r(
        client.enroll(gallery, "José", images=[path, images[1], io.BytesIO(images[2])])
    )
    assert [s.status for s in enrolment.samples] == ["enrolled"] * 3
    assert enrolment.subject_id == "José" and enrolment.model == "random@1"
    repeat = await r(client.enroll(gallery, "José", images=[images[0]]))
    assert (
        repeat.samples[0].duplicate
        and repeat.samples[0].sample_id == enrolment.samples[0].sample_id
    )
    for index, subject_id in enumerate(ODD_IDS[1:], start=1):
        vectors = np.array([unit(index)], dtype=np.float32)
        enrolled = await r(client.enroll(gallery, subject_id, embeddings=vectors))
        assert enrolled.subject_id == subject_id and len(enrolled.enrolled) == 1

    detail = await r(client.get_subject(gallery, "José"))
    assert detail.subject_id == "José" and detail.sample_count == 3
    assert sorted(s.content_sha256 for s in detail.samples or []) == sorted(
        hashlib.sha256(data).hexdigest() for data in images
    )
    page = await r(client.list_subjects(gallery, limit=2))
    assert [s.subject_id for s in page.subjects] == sorted(ODD_IDS)[:2]
    assert page.next_cursor is not None and page.subjects[0].samples is None
    rest = await r(client.list_subjects(gallery, limit=10, cursor=page.next_cursor))
    assert [s.subject_id for s in rest.subjects] == sorted(ODD_IDS)[2:] and rest.next_cursor is None
    listed = await collect(client.iter_subjects(gallery, page_size=1))
    assert [s.subject_id for s in listed] == sorted(ODD_IDS)

    # Identify and verify: a probe equal to an enrolled sample scores cosine 1 against it.
    found = await r(client.identify(gallery, embeddings=[unit(2), unit(3)], top_k=2, threshold=0.5))
    assert found.gallery == gallery and found.model == "random@1"
    assert [(x.decision, x.subject_id) for x in found.results] == [
        ("known", ODD_IDS[2]),
        ("known", ODD_IDS[3]),
    ]
    assert found.results[0].score == pytest.approx(1.0, abs=1e-5) and found.results[0].known
    assert found.results[0].candidates[0].subject_id == ODD_IDS[2]
    by_image = await r(client.identify(gallery, images=[images[1]], fpir=0.1))
    assert by_image.results[0].candidates[0].subject_id == "José"
    assert by_image.results[0].candidates[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_image.results[0].fpir == 0.1
    match = await r(client.verify(gallery, "José", image=path, threshold=0.5))
    assert (
        match.match and match.subject_id == "José" and match.score == pytest.approx(1.0, abs=1e-5)
    )
    other = await r(client.verify(gallery, ODD_IDS[1], embedding=np.negative(unit(1)), fpir=0.1))
    assert not other.match and other.score == pytest.approx(-1.0, abs=1e-5)

    # Identify results carry the bound; the gallery's own calibration set.
    assert 0 < by_image.results[0].fpir_upper < 1 and other.fpir_upper is not None
    bundle_calibration = await r(client.get_calibration(gallery))
    assert (bundle_calibration.source, bundle_calibration.needed) == ("bundle", 100)
    strangers = np.random.default_rng(7).standard_normal((100, DIM)).astype(np.float32)
    uploaded = await r(client.add_calibration_samples(gallery, embeddings=strangers[:60]))
    assert uploaded.model == "random@1" and all(p.accepted for p in uploaded.samples)
    assert (uploaded.calibration.source, uploaded.calibration.gallery_set_size) == ("bundle", 60)
    by_images = await r(client.add_calibration_samples(gallery, images=[images[0], b"junk"]))
    assert [p.status for p in by_images.samples] == ["accepted", "rejected"]
    assert by_images.rejected[0].code == "invalid_image"
    done = await r(client.add_calibration_samples(gallery, embeddings=strangers[60:]))
    calibration = done.calibration
    assert (calibration.source, calibration.size) == ("gallery", 101)
    assert [p.fpir for p in calibration.thresholds] == [0.1]
    assert calibration == await r(client.get_calibration(gallery))
    assert calibration.scores is None
    with_scores = await r(client.get_calibration(gallery, scores=True))
    assert with_scores.thresholds == calibration.thresholds
    scores = with_scores.scores
    assert scores is not None and len(scores) == 101 and scores == sorted(scores, reverse=True)
    # The FPIR-0.1 threshold accepts at most 10 of these 101 strangers, and the score just
    # above the accepted ones is below it.
    threshold = calibration.thresholds[0].threshold
    assert threshold is not None
    accepted = sum(score >= threshold for score in scores)
    assert accepted <= 10 and scores[accepted] < threshold
    listed_probes = await collect(client.iter_calibration_samples(gallery, page_size=40))
    assert len(listed_probes) == 101 and listed_probes[60].source == "image"
    summary = (await r(client.get_gallery(gallery))).calibration
    assert summary is not None and summary.source == "gallery"
    assert summary.fpir_upper == calibration.thresholds[0].fpir_upper
    assert (await r(client.delete_calibration(gallery))).source == "bundle"

    # Deletions.
    await r(client.delete_sample(gallery, "José", enrolment.samples[0].sample_id or 0))
    assert (await r(client.get_subject(gallery, "José"))).sample_count == 2
    await r(client.delete_subject(gallery, ODD_IDS[3]))
    with pytest.raises(OpenGalleryError) as missing:
        await r(client.get_subject(gallery, ODD_IDS[3]))
    assert (missing.value.status, missing.value.code) == (404, "not_found")

    # Models and a migration of a gallery enrolled from images.
    models = await r(client.list_models())
    assert [(m.model, m.default, m.embedding_dim) for m in models] == [("random@1", True, DIM)]
    bundle = make_random_bundle(tmp_path / f"v2-{kind}", seed=5, embedding_dim=DIM, version="2")
    assert await r(client.register_model(bundle.path)) == "random@2"
    await r(client.create_gallery("images"))
    await r(client.put_subject("images", "a b"))
    await r(client.enroll("images", "a b", images=images[:2]))
    job_id = await r(client.migrate("images", "random@2"))
    seen: list[str] = []
    job = await r(
        client.wait_for_job(
            job_id, poll=0.05, timeout=60, on_progress=lambda j: seen.append(j.status)
        )
    )
    assert (job.status, job.gallery, job.from_model, job.to_model) == (
        "succeeded",
        "images",
        "random@1",
        "random@2",
    )
    assert job.progress.done == job.progress.total == 2 and seen[-1] == "succeeded"
    assert (await r(client.get_job(job_id))).job_id == job_id
    assert (await r(client.get_gallery("images"))).model == "random@2"

    # Keys: a client key reads but may not create galleries.
    key = await r(client.create_key("client", "kiosk"))
    assert key.key.startswith("og_") and (key.scope, key.name) == ("client", "kiosk")
    with Client(url, key.key) as as_client:
        assert len(as_client.list_galleries()) == 3
        with pytest.raises(OpenGalleryError) as forbidden:
            as_client.create_gallery("nope")
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    # Listing and revoking keys: routes the design names; a server without them says so.
    try:
        listed_keys = await r(client.list_keys())
    except OpenGalleryError as error:
        assert error.status in (404, 405)
    else:
        assert key.key_id in [k.key_id for k in listed_keys]
    try:
        await r(client.revoke_key(key.key_id))
    except OpenGalleryError as error:
        assert error.status in (404, 405)

    await r(client.delete_gallery("mean"))
    with pytest.raises(OpenGalleryError) as gone:
        await r(client.get_gallery("mean"))
    assert gone.value.code == "not_found" and "mean" in gone.value.message
    if isinstance(client, Client):
        client.close()
    else:
        await client.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_method_against_a_real_server(
    server: ServerThread, tmp_path: Path, kind: str
) -> None:
    asyncio.run(every_method(server.url, tmp_path, kind))


def test_errors_carry_the_api_code_status_and_details(server: ServerThread) -> None:
    with Client(server.url, ADMIN_KEY) as client:
        client.create_gallery("g")
        with pytest.raises(OpenGalleryError) as taken:
            client.create_gallery("g")
        assert (taken.value.status, taken.value.code) == (409, "already_exists")
        client.put_subject("g", "a")
        with pytest.raises(OpenGalleryError) as rejected:
            client.enroll("g", "a", images=[png_bytes(1)[:60]])
        error = rejected.value
        assert error.status == 422 and error.details is not None
        assert [s["status"] for s in error.details["samples"]] == ["rejected"]
        assert str(error).startswith(f"HTTP 422 {error.code}: ")
        with pytest.raises(OpenGalleryError) as invalid:
            client.identify("g", embeddings=[unit(0)], fpir=0.1, threshold=0.5)
        assert (invalid.value.status, invalid.value.code) == (422, "validation_error")
    with Client(server.url, "wrong") as stranger, pytest.raises(OpenGalleryError) as denied:
        stranger.list_galleries()
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    with Client(server.url, ADMIN_KEY) as client, pytest.raises(ValueError):
        client.identify("g")  # neither images nor embeddings: a mistake, not a request
    with Client(server.url, ADMIN_KEY) as client, pytest.raises(ValueError):
        client.verify("g", "a", image=png_bytes(1), embedding=unit(0))
    with Client(server.url, ADMIN_KEY) as client, pytest.raises(TypeError, match="not one image"):
        client.enroll("g", "a", images="one.png")  # type: ignore[arg-type]


# -- retries, deterministically: a mock transport and recorded waits --
class Script:
    """Answers a list of responses (or exceptions) in turn, and counts requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        # A fresh copy: a response object is read once, by one client.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())


OK = httpx.Response(200, json={"status": "ok"})
UNAVAILABLE = httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
GALLERY = {
    "name": "g",
    "model": "m@1",
    "fpir": 0.01,
    "scoring": "max",
    "keep_images": True,
    "subject_count": 0,
    "sample_count": 0,
    "version": 0,
    "created": "now",
    "added_by_a_newer_server": [1, 2],
}


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []

    async def async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("opengallery.client._sync.time.sleep", recorded.append)
    monkeypatch.setattr("opengallery.client._async.asyncio.sleep", async_sleep)
    return recorded


def scripted(script: Script, **options: Any) -> Client:
    return Client("http://og.test", "k", transport=httpx.MockTransport(script), **options)


def test_retries_503_with_exponential_backoff_then_succeeds(waits: list[float]) -> None:
    script = Script(UNAVAILABLE, UNAVAILABLE, OK)
    with scripted(script, retries=3, backoff=0.5) as client:
        assert client.health().status == "ok"
    assert len(script.requests) == 3 and waits == [0.5, 1.0]
    assert all(request.headers["X-API-Key"] == "k" for request in script.requests)


def test_honours_retry_after_within_max_backoff(waits: list[float]) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "0"})
    later = httpx.Response(503, headers={"Retry-After": "120"})
    script = Script(limited, later, OK)
    with scripted(script, retries=3, backoff=5.0, max_backoff=10.0) as client:
        assert client.health().status == "ok"
    assert waits == [0.0, 10.0]


def test_gives_up_after_n_retries_with_the_last_error(waits: list[float]) -> None:
    script = Script(UNAVAILABLE)
    with scripted(script, retries=2, backoff=0.1) as client, pytest.raises(OpenGalleryError) as e:
        client.get_gallery("g")
    assert len(script.requests) == 3 and waits == [0.1, 0.2]
    assert (e.value.status, e.value.code, e.value.message) == (503, "unavailable", "busy")


def test_unsafe_requests_are_not_repeated_once_they_may_have_arrived(waits: list[float]) -> None:
    for answer in (UNAVAILABLE, httpx.ReadError("connection reset")):
        script = Script(answer, httpx.Response(201, json=GALLERY))
        with scripted(script, retries=3) as client, pytest.raises(OpenGalleryError):
            client.create_gallery("g")
        assert len(script.requests) == 1
    # A connection never made carried nothing: even a create is sent again.
    script = Script(httpx.ConnectError("refused"), httpx.Response(201, json=GALLERY))
    with scripted(script, retries=3, backoff=0) as client:
        gallery = client.create_gallery("g")
    assert len(script.requests) == 2 and gallery.name == "g"
    assert gallery.raw["added_by_a_newer_server"] == [1, 2]  # unknown fields are harmless
    # An enrolment is repeatable (the server deduplicates by content).
    enrolled = {
        "subject_id": "a",
        "model": "m@1",
        "samples": [{"sample_id": 1, "status": "enrolled"}],
    }
    script = Script(httpx.ReadError("reset"), httpx.Response(201, json=enrolled))
    with scripted(script, retries=3, backoff=0) as client:
        assert client.enroll("g", "a", images=[b"png"]).enrolled[0].sample_id == 1
    assert len(script.requests) == 2
    assert all(b"\r\n\r\npng\r\n" in request.read() for request in script.requests)


def test_paths_are_quoted_segment_by_segment() -> None:
    script = Script(httpx.Response(204))
    with scripted(script) as client:
        client.delete_sample("a b", "x/../y?#%", 7)
    assert (
        script.requests[0].url.raw_path
        == b"/v1/galleries/a%20b/subjects/x%2F..%2Fy%3F%23%25/samples/7"
    )


def test_an_error_body_that_is_not_json_still_explains(waits: list[float]) -> None:
    page = httpx.Response(502, text="<html><body>Bad gateway from the proxy</body></html>")
    with (
        scripted(Script(page), retries=1, backoff=0) as client,
        pytest.raises(OpenGalleryError) as e,
    ):
        client.list_models()
    assert (e.value.status, e.value.code) == (502, "http_error")
    assert "502" in e.value.message and "Bad gateway from the proxy" in e.value.message
    not_json = Script(httpx.Response(200, text="not json"))
    with scripted(not_json) as client, pytest.raises(OpenGalleryError) as unreadable:
        client.list_models()
    assert unreadable.value.code == "invalid_response"


def test_async_client_retries_the_same_way(waits: list[float]) -> None:
    script = Script(UNAVAILABLE, httpx.ConnectError("refused"), OK)

    async def run() -> str:
        transport = httpx.MockTransport(script)
        async with AsyncClient("http://og.test", "k", transport=transport, backoff=0.25) as client:
            return (await client.health()).status

    assert asyncio.run(run()) == "ok"
    assert len(script.requests) == 3 and waits == [0.25, 0.5]


def test_connection_refused_is_a_connection_error_after_bounded_retries(
    waits: list[float],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "k", retries=2, backoff=0.01) as client, pytest.raises(OpenGalleryError) as e:
        client.list_galleries()
    assert (e.value.status, e.value.code) == (None, "connection_error")
    assert f"{url}/v1/galleries" in e.value.message
    assert waits == [0.01, 0.02]

    async def run() -> None:
        async with AsyncClient(url, "k", retries=1, backoff=0.01) as client:
            await client.ready()

    with pytest.raises(OpenGalleryError) as async_error:
        asyncio.run(run())
    assert async_error.value.code == "connection_error"


def test_a_silent_server_is_a_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # connections complete in the kernel; nothing ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        silent = Client(url, "k", timeout=0.2, retries=0)
        with silent, pytest.raises(OpenGalleryError) as e:
            silent.health()
    assert (e.value.status, e.value.code) == (None, "timeout")


def test_the_client_and_http_commands_import_without_service_or_torch() -> None:
    code = (
        "import sys\n"
        "for name in ('service', 'torch', 'fastapi', 'starlette', 'training'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import opengallery.client, opengallery.enroll, opengallery.push, opengallery.calibrate\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_service_extra_includes_the_client_extra() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert set(extras["client"]) <= set(extras["service"])


@pytest.mark.parametrize("url", ["localhost:8000", "localhost://8000", "ftp://og.test", "http://"])
def test_a_base_url_without_http_is_refused_before_any_request(url: str) -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    with pytest.raises(ValueError, match="http:// or https://.*" + re.escape(f"got {url!r}")):
        Client(url, "k", transport=transport)
    with pytest.raises(ValueError, match=re.escape(f"got {url!r}")):
        AsyncClient(url, "k")
    assert sent == []
    assert Client("HTTPS://og.test/", "k", transport=transport).url == "HTTPS://og.test"


def test_enroll_many_sends_many_subjects_in_one_request(server: ServerThread) -> None:
    with Client(server.url, ADMIN_KEY) as client:
        client.create_gallery("bulk")
        client.put_subject("bulk", "José")
        items = [
            BulkItem("José", embedding=[1.0] + [0.0] * (DIM - 1)),
            BulkItem("a?b#c", image=png_bytes(4)),
            BulkItem("ghost", embedding=[0.0, 1.0] + [0.0] * (DIM - 2)),
        ]
        without = client.enroll_many("bulk", items)
        assert [s.status for s in without.samples] == ["enrolled", "rejected", "rejected"]
        assert [s.code for s in without.rejected] == ["subject_not_found"] * 2
        created = client.enroll_many("bulk", items, create_subjects=True)
        assert [s.enrolled for s in created.samples] == [True, True, True]
        assert created.samples[0].duplicate and not created.samples[1].duplicate
        assert client.get_subject("bulk", "a?b#c").sample_count == 1
        with pytest.raises(ValueError, match="exactly one of image or embedding"):
            client.enroll_many("bulk", [BulkItem("x")])
        with pytest.raises(OpenGalleryError) as error:
            client.enroll_many("bulk", [BulkItem("x", embedding=[1.0])], create_subjects=True)
        assert error.value.status == 422 and error.value.code == "invalid_embedding"
        assert error.value.details is not None and len(error.value.details["samples"]) == 1

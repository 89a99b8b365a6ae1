"""Every bad input of the HTTP API is a 4xx JSON error with a code and a message; never a 500."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.api.app import create_app
from service.settings import Settings
from service.testing import json_bytes, png_bytes

from ..conftest import ADMIN_KEY, DIM


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    # 12000x12000 pixels in a few kilobytes: a 1-bit image of zeros compresses to almost nothing.
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def limited(tmp_path: Path, bundle_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        model=bundle_path,
        admin_key=ADMIN_KEY,
        max_request_bytes=200_000,
        max_image_bytes=50_000,
        max_items_per_request=4,
        max_top_k=10,
        max_metadata_bytes=100,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.headers["X-API-Key"] = ADMIN_KEY
        assert test_client.post("/v1/galleries", json={"name": "g"}).status_code == 201
        assert test_client.put("/v1/galleries/g/subjects/a").status_code == 201
        yield test_client


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def enrol_files(client: TestClient, *files: bytes):
    return client.post(
        "/v1/galleries/g/subjects/a/samples",
        files=[("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)],
    )


def identify_files(client: TestClient, *files: bytes):
    return client.post(
        "/v1/galleries/g/identify",
        files=[("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)],
    )


def test_corrupt_truncated_empty_images(limited: TestClient) -> None:
    good = png_bytes(1)
    corrupt = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    truncated = good[: len(good) // 2]
    cases = {"invalid_image": corrupt, "empty_image": b""}
    for code, data in cases.items():
        assert_error(enrol_files(limited, data), 422, code)
        assert_error(identify_files(limited, data), 422, code)
    error = assert_error(enrol_files(limited, truncated), 422)
    assert error["code"] in {"truncated_image", "invalid_image"}
    assert_error(identify_files(limited, truncated), 422)
    # Not an image at all: a text file.
    assert_error(enrol_files(limited, b"hello, world"), 422, "invalid_image")
    # A mixed batch: the good one is enrolled, the bad ones rejected with their reasons.
    mixed = enrol_files(limited, good, b"", corrupt)
    assert mixed.status_code == 201
    statuses = [(s["status"], s["code"]) for s in mixed.json()["samples"]]
    assert statuses == [
        ("enrolled", None),
        ("rejected", "empty_image"),
        ("rejected", "invalid_image"),
    ]
    assert "0 bytes" in mixed.json()["samples"][1]["reason"]


def test_decompression_bomb_png(limited: TestClient, huge_png: bytes) -> None:
    assert len(huge_png) < 50_000  # under the byte limit: the pixel limit must catch it
    error = assert_error(enrol_files(limited, huge_png), 413, "too_many_pixels")
    assert "the limit is 25000000" in error["message"]
    assert_error(identify_files(limited, huge_png), 413, "too_many_pixels")
    encoded = base64.b64encode(huge_png).decode()
    assert_error(
        limited.post("/v1/galleries/g/identify", json={"images": [encoded]}), 413, "too_many_pixels"
    )


def test_byte_limits(limited: TestClient) -> None:
    big_image = png_bytes(5, size=(200, 200))  # random pixels: about 40 kB, under 50 kB
    bigger = png_bytes(5, size=(300, 300))  # about 90 kB: over the image limit
    assert len(big_image) < 50_000 < len(bigger)
    assert enrol_files(limited, big_image).status_code == 201
    assert_error(enrol_files(limited, bigger), 413, "image_too_large")
    too_big_body = limited.post(
        "/v1/galleries/g/identify",
        content=b"{" + b" " * 300_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert_error(too_big_body, 413, "payload_too_large")


def test_base64_that_is_not(limited: TestClient) -> None:
    body = {"images": ["this is not base64!!"]}
    assert_error(
        limited.post("/v1/galleries/g/subjects/a/samples", json=body), 422, "invalid_base64"
    )
    assert_error(limited.post("/v1/galleries/g/identify", json=body), 422, "invalid_base64")
    valid_base64_not_image = {"images": [base64.b64encode(b"plain text").decode()]}
    assert_error(
        limited.post("/v1/galleries/g/identify", json=valid_base64_not_image), 422, "invalid_image"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings(limited: TestClient, bad: float) -> None:
    vector = [0.1] * DIM
    vector[3] = bad
    for path in ("/v1/galleries/g/subjects/a/samples", "/v1/galleries/g/identify"):
        response = limited.post(
            path,
            content=json_bytes({"embeddings": [vector]}),
            headers={"content-type": "application/json"},
        )
        error = assert_error(response, 422)
        assert "NaN or infinite" in error["message"]


def test_wrong_dimension_and_zero_vector(limited: TestClient) -> None:
    for vector, text in (([0.1] * (DIM + 1), "dimension 17"), ([0.0] * DIM, "zero")):
        for path in ("/v1/galleries/g/subjects/a/samples", "/v1/galleries/g/identify"):
            error = assert_error(limited.post(path, json={"embeddings": [vector]}), 422)
            assert text in error["message"]
    verify = limited.post("/v1/galleries/g/verify", json={"subject_id": "a", "embedding": [1.0]})
    assert_error(verify, 422)


def test_unknown_gallery_and_subject(limited: TestClient) -> None:
    probe = {"embeddings": [[1.0] * DIM]}
    assert_error(limited.get("/v1/galleries/nope"), 404, "not_found")
    assert_error(limited.post("/v1/galleries/nope/identify", json=probe), 404, "not_found")
    assert_error(limited.put("/v1/galleries/nope/subjects/a"), 404, "not_found")
    assert_error(limited.get("/v1/galleries/nope/subjects"), 404, "not_found")
    assert_error(limited.get("/v1/galleries/g/subjects/nobody"), 404, "not_found")
    assert_error(limited.delete("/v1/galleries/g/subjects/nobody"), 404, "not_found")
    assert_error(
        limited.post("/v1/galleries/g/subjects/nobody/samples", json=probe), 404, "not_found"
    )
    assert_error(limited.delete("/v1/galleries/g/subjects/a/samples/999"), 404, "not_found")
    assert_error(limited.get("/v1/jobs/123"), 404, "not_found")
    assert_error(limited.get("/v1/no-such-route"), 404)


@pytest.mark.parametrize(
    "raw_id",
    ["x" * 257, "a%2Fb", "a%2fb", "%2E%2E", "%2E", "bad%01id", "tab%09id", "nl%0Aid", "del%7Fid"],
)
def test_bad_ids_in_paths(limited: TestClient, raw_id: str) -> None:
    # Percent-encoded: clients remove literal "." and ".." segments before sending.
    assert_error(limited.put(f"/v1/galleries/g/subjects/{raw_id}"), 422)
    assert_error(limited.get(f"/v1/galleries/{raw_id}"), 422)


@pytest.mark.parametrize("name", ["", "x" * 257, "a/b", ".", "..", "bad\x00id", "bad\nid"])
def test_bad_ids_in_bodies(limited: TestClient, name: str) -> None:
    assert_error(limited.post("/v1/galleries", json={"name": name}), 422, "validation_error")
    verify = {"subject_id": name, "embedding": [1.0] * DIM}
    assert_error(limited.post("/v1/galleries/g/verify", json=verify), 422)


def test_longest_valid_and_unicode_ids(limited: TestClient) -> None:
    longest = "é" * 256
    assert limited.put(f"/v1/galleries/g/subjects/{longest}").status_code == 201
    assert limited.get(f"/v1/galleries/g/subjects/{longest}").json()["subject_id"] == longest
    assert limited.post("/v1/galleries", json={"name": "Galería José"}).status_code == 201
    assert limited.get("/v1/galleries/Galería José").json()["name"] == "Galería José"


def test_request_shape_errors(limited: TestClient) -> None:
    path = "/v1/galleries/g/identify"
    json_headers = {"content-type": "application/json"}
    assert_error(
        limited.post(path, content=b"{not json", headers=json_headers), 422, "invalid_json"
    )
    assert_error(limited.post(path, content=b"[]", headers=json_headers), 422, "validation_error")
    assert_error(
        limited.post(path, content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(limited.post(path, json={}), 422, "no_input")
    assert_error(limited.post(path, json={"embeddings": []}), 422, "no_input")
    both = {"embeddings": [[1.0] * DIM], "images": [base64.b64encode(png_bytes(1)).decode()]}
    assert_error(limited.post(path, json=both), 422)
    assert_error(limited.post(path, json={"embeddings": [[1.0] * DIM], "extra": 1}), 422)
    assert_error(limited.post(path, json={"embeddings": [[1.0] * DIM] * 5}), 413, "too_many_items")
    assert_error(limited.post(path, json={"embeddings": [[1.0] * DIM], "top_k": 11}), 422)
    assert_error(limited.post(path, json={"embeddings": [[1.0] * DIM], "top_k": 0}), 422)
    assert_error(limited.post(path, json={"embeddings": [[1.0] * DIM], "fpir": 0}), 422)
    assert_error(limited.post(path, json={"embeddings": [["a"] * DIM]}), 422)
    form_too_many = identify_files(limited, *[png_bytes(i) for i in range(5)])
    assert_error(form_too_many, 413)
    form_bad_field = limited.post(
        path, files=[("images", ("a.png", png_bytes(1), "image/png"))], data={"top_k": "many"}
    )
    assert_error(form_bad_field, 422)
    assert_error(
        limited.put("/v1/galleries/g/subjects/b", json={"metadata": {"k": "v" * 200}}),
        413,
        "metadata_too_large",
    )
    assert_error(limited.put("/v1/galleries/g/subjects/b", json={"metadata": [1]}), 422)
    assert_error(limited.get("/v1/galleries/g/subjects", params={"limit": 0}), 422)
    assert_error(limited.get("/v1/galleries/g/subjects", params={"limit": 10**6}), 422)
    assert_error(limited.delete("/v1/galleries/g/subjects/a/samples/abc"), 422)
    assert_error(limited.patch("/v1/galleries/g"), 405, "method_not_allowed")


def test_unsupported_fpir_says_why(limited: TestClient) -> None:
    limited.post("/v1/galleries/g/subjects/a/samples", json={"embeddings": [[1.0] * DIM]})
    error = assert_error(
        limited.post("/v1/galleries/g/identify", json={"embeddings": [[1.0] * DIM], "fpir": 0.001}),
        422,
        "unsupported_fpir",
    )
    # The random bundle has 2000 calibration embeddings; fpir 0.001 needs 10 / 0.001 = 10000.
    assert "10000" in error["message"] and "2000" in error["message"]
    assert_error(limited.post("/v1/galleries", json={"name": "h", "fpir": 0.001}), 422)


def nested_lists(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deep_metadata_is_refused_before_it_is_stored(client: TestClient) -> None:
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    # The metadata object is level 1, so 31 nested lists inside it make 32 levels: the limit.
    deepest_allowed = f'{{"metadata": {{"a": {nested_lists(31)}}}}}'
    headers = {"content-type": "application/json"}
    ok = client.put("/v1/galleries/g/subjects/ok", content=deepest_allowed, headers=headers)
    assert ok.status_code == 201, ok.text
    too_deep = f'{{"metadata": {{"a": {nested_lists(300)}}}}}'
    error = assert_error(
        client.put("/v1/galleries/g/subjects/poison", content=too_deep, headers=headers), 422
    )
    assert "32 levels" in error["message"]
    one_too_deep = f'{{"metadata": {{"a": {nested_lists(32)}}}}}'
    assert_error(
        client.put("/v1/galleries/g/subjects/poison", content=one_too_deep, headers=headers), 422
    )
    assert_error(client.get("/v1/galleries/g/subjects/poison"), 404, "not_found")
    listing = client.get("/v1/galleries/g/subjects")
    assert listing.status_code == 200, listing.text
    assert [s["subject_id"] for s in listing.json()["subjects"]] == ["ok"]
    assert client.get("/v1/galleries/g/subjects/ok").status_code == 200


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metadata(client: TestClient, bad: str) -> None:
    assert client.post("/v1/galleries", json={"name": "g"}).status_code == 201
    headers = {"content-type": "application/json"}
    for body in (
        f'{{"metadata": {{"x": {bad}}}}}',
        f'{{"metadata": {{"x": [1, {{"y": {bad}}}]}}}}',
    ):
        error = assert_error(
            client.put("/v1/galleries/g/subjects/s", content=body, headers=headers), 422
        )
        assert "NaN or infinite" in error["message"]
    assert_error(client.get("/v1/galleries/g/subjects/s"), 404, "not_found")


@pytest.mark.parametrize("raw_id", ["%FF", "a%C3", "%C0%AF", "%ED%A0%80"])
def test_ids_with_invalid_utf8_in_paths(limited: TestClient, raw_id: str) -> None:
    error = assert_error(limited.put(f"/v1/galleries/g/subjects/{raw_id}"), 422, "invalid_id")
    assert "UTF-8" in error["message"]
    assert_error(limited.get(f"/v1/galleries/{raw_id}"), 422, "invalid_id")
    subjects = limited.get("/v1/galleries/g/subjects").json()["subjects"]
    assert [s["subject_id"] for s in subjects] == ["a"]


def test_percent_encoded_utf8_id_round_trips(limited: TestClient) -> None:
    created = limited.put("/v1/galleries/g/subjects/Jos%C3%A9")
    assert created.status_code == 201, created.text
    assert created.json()["subject_id"] == "José"
    assert limited.get("/v1/galleries/g/subjects/Jos%C3%A9").json()["subject_id"] == "José"
    # U+FFFD itself, validly encoded, is an ordinary printable id (not a stand-in for %FF).
    replacement = limited.put("/v1/galleries/g/subjects/%EF%BF%BD")
    assert replacement.status_code == 201, replacement.text
    assert replacement.json()["subject_id"] == "\ufffd"


def test_verify_takes_one_probe_in_identify_form(limited: TestClient) -> None:
    enrolled = [0.3] * DIM
    assert (
        limited.post(
            "/v1/galleries/g/subjects/a/samples", json={"embeddings": [enrolled]}
        ).status_code
        == 201
    )
    path = "/v1/galleries/g/verify"
    probe_vector = [0.3] * (DIM // 2) + [0.1] * (DIM // 2)
    probe_image = base64.b64encode(png_bytes(7)).decode()
    for singular, plural in (
        ({"embedding": probe_vector}, {"embeddings": [probe_vector]}),
        ({"image": probe_image}, {"images": [probe_image]}),
    ):
        one = limited.post(path, json={"subject_id": "a", **singular})
        listed = limited.post(path, json={"subject_id": "a", **plural})
        assert one.status_code == 200, one.text
        assert listed.status_code == 200, listed.text
        assert listed.json() == one.json()
    vector_answer = limited.post(path, json={"subject_id": "a", "embeddings": [probe_vector]})
    assert vector_answer.json()["match"] is True  # cosine 0.89 with the enrolled vector
    for many in ({"embeddings": [probe_vector] * 2}, {"images": [probe_image] * 2}):
        error = assert_error(limited.post(path, json={"subject_id": "a", **many}), 422)
        assert "verify takes exactly one probe, got 2" in error["message"]
    assert_error(limited.post(path, json={"subject_id": "a", "embeddings": []}), 422)
    both = {"subject_id": "a", "embedding": probe_vector, "embeddings": [probe_vector]}
    error = assert_error(limited.post(path, json=both), 422)
    assert "exactly one of" in error["message"]
    assert_error(limited.post(path, json={"subject_id": "a"}), 422)


def image_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


BLANK_IMAGES = {
    "1x1 black": Image.new("L", (1, 1)),
    "28x28 black": Image.new("L", (28, 28)),
    "28x28 grey RGB": Image.new("RGB", (28, 28), (90, 90, 90)),
    "transparent RGBA": Image.new("RGBA", (28, 28), (0, 0, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(BLANK_IMAGES))
def test_blank_images_are_rejected(limited: TestClient, name: str) -> None:
    blank = image_bytes(BLANK_IMAGES[name])
    good = png_bytes(3)
    assert enrol_files(limited, good).status_code == 201
    message = "the image has no content (all pixels are the same value)"
    error = assert_error(identify_files(limited, blank), 422, "blank_image")
    assert message in error["message"]
    encoded = base64.b64encode(blank).decode()
    assert_error(
        limited.post("/v1/galleries/g/identify", json={"images": [encoded]}), 422, "blank_image"
    )
    assert_error(
        limited.post("/v1/galleries/g/verify", json={"subject_id": "a", "image": encoded}),
        422,
        "blank_image",
    )
    mixed = enrol_files(limited, png_bytes(4), blank)
    assert mixed.status_code == 201, mixed.text
    outcomes = mixed.json()["samples"]
    assert [(s["status"], s["code"]) for s in outcomes] == [
        ("enrolled", None),
        ("rejected", "blank_image"),
    ]
    assert outcomes[1]["reason"] == message
    assert limited.get("/v1/galleries/g/subjects/a").json()["sample_count"] == 2


def test_one_differing_pixel_is_not_blank(limited: TestClient) -> None:
    almost_black = Image.new("L", (28, 28))
    almost_black.putpixel((5, 5), 1)
    response = enrol_files(limited, image_bytes(almost_black))
    assert response.status_code == 201, response.text
    assert response.json()["samples"][0]["status"] == "enrolled"

"""parse_small_form against Starlette's multipart parser as the reference: the same items for
every body it parses, and None (so that Starlette's parser answers) for every body that parser
refuses, on generated forms and on corrupted copies of them."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.uploads import FilePart, parse_small_form

LIMITS = {"max_files": 3, "max_fields": 3, "max_part_size": 40}
BOUNDARY_CHARS = "abcXYZ019'()+_,-./:=?"


def reference_items(body: bytes, content_type: str) -> list[tuple[str, str | FilePart]] | None:
    """Starlette's items for the body (files read into FilePart), None where it refuses it."""

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    async def parse() -> list[tuple[str, str | FilePart]]:
        headers = Headers({"content-type": content_type})
        form = await MultiPartParser(headers, stream(), **LIMITS).parse()
        items: list[tuple[str, str | FilePart]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                items.append((key, FilePart(await value.read(), value.filename)))
            else:
                items.append((key, value))
        await form.close()
        return items

    try:
        return asyncio.run(parse())
    except MultiPartException:
        return None


def fast_items(body: bytes, content_type: str) -> list[tuple[str, str | FilePart]] | None:
    return parse_small_form(body, content_type, **LIMITS)


@st.composite
def forms(draw: st.DrawFn, plain: bool) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type; `plain` ones as clients send them
    (within LIMITS, no preamble or epilogue, data free of the boundary)."""
    boundary = draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=12)).encode()
    fragments = [b"\r\n", b"--", b"\r\n\r\n", boundary, b"\r\n--" + boundary, b'"', b";"]
    piece = (
        st.binary(max_size=12)
        if plain
        else st.one_of(st.binary(max_size=12), st.sampled_from(fragments))
    )
    data = st.lists(piece, max_size=4).map(b"".join)
    if plain:
        data = data.filter(lambda d: b"\r\n--" + boundary not in d + b"\r\n--")
    name = st.text(max_size=8) if not plain else st.text("abc_xyz", min_size=1, max_size=8)
    parts = []
    part_count = draw(st.integers(1 if plain else 0, 3 if plain else 5))
    files = fields = 0
    for _ in range(part_count):
        is_file = draw(st.booleans())
        value = draw(data)
        if plain and not is_file:
            value = value[: LIMITS["max_part_size"]]
            fields += 1
        files += is_file
        disposition = b'form-data; name="' + draw(name).encode() + b'"'
        if is_file:
            disposition += b'; filename="' + draw(name).encode() + b'"'
        headers = [b"Content-Disposition: " + disposition]
        if is_file and draw(st.booleans()):
            headers.append(b"Content-Type: image/png")
        if not plain and draw(st.booleans()):
            headers.insert(
                draw(st.integers(0, len(headers))),
                draw(
                    st.sampled_from(
                        [
                            b"X-A:  b",
                            b"x-a:\tb",
                            b" folded: x",
                            b"bad header",
                            b":x",
                            b"content-disposition: form-data",
                        ]
                    )
                ),
            )
        parts.append(b"\r\n".join(headers) + b"\r\n\r\n" + value)
    body = b"--" + boundary + b"\r\n" + (b"\r\n--" + boundary + b"\r\n").join(parts)
    body += b"\r\n--" + boundary + b"--"
    if not plain:
        body = draw(st.sampled_from([b"", b"\r\n"])) + body
        body += draw(st.sampled_from([b"", b"\r\n", b"epilogue", b"\r\n--" + boundary + b"--"]))
    quoted = draw(st.booleans())
    content_type = "multipart/form-data; boundary=" + (
        f'"{boundary.decode()}"' if quoted else boundary.decode()
    )
    if draw(st.booleans()):
        content_type += "; charset=" + draw(st.sampled_from(["utf-8", "latin-1", "nonesuch"]))
    return body, content_type


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms(plain=True))
def test_plain_forms_are_parsed_as_starlette_parses_them(form: tuple[bytes, str]) -> None:
    body, content_type = form
    expected = reference_items(body, content_type)
    assert expected is not None
    assert fast_items(body, content_type) == expected


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms(plain=False))
def test_any_form_is_parsed_as_starlette_parses_it_or_left_to_starlette(
    form: tuple[bytes, str],
) -> None:
    body, content_type = form
    fast = fast_items(body, content_type)
    if fast is not None:
        assert fast == reference_items(body, content_type)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms(plain=True), st.data())
def test_corrupted_forms_are_parsed_as_starlette_parses_them_or_left_to_starlette(
    form: tuple[bytes, str], data: st.DataObject
) -> None:
    body, content_type = form
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(body)))
        end = data.draw(st.integers(start, min(len(body), start + 4)))
        inserted = data.draw(st.sampled_from([b"", b"\r", b"\n", b"-", b"\r\n", b"x", b"\x00"]))
        body = body[:start] + inserted + body[end:]
    fast = fast_items(body, content_type)
    if fast is not None:
        assert fast == reference_items(body, content_type)


def test_a_form_of_one_image_as_the_client_sends_it() -> None:
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n5\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n--b\r\n"
        b"--b0--\r\n"
    )
    items = fast_items(body, "multipart/form-data; boundary=b0")
    assert items == [("top_k", "5"), ("images", FilePart(b"\x89PNG\r\n--b", "a.png"))]
    assert items == reference_items(body, "multipart/form-data; boundary=b0")

"""Reading images and embeddings from a request: multipart files, JSON base64, or JSON vectors.

Routes that take uploads accept either `multipart/form-data` (repeatable file field) or
`application/json`; their OpenAPI entries describe both (`openapi_extra`).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import TOKEN_CHARS, parse_options_header
from starlette.datastructures import UploadFile

from service.api.errors import describe_validation
from service.api.schemas import FPIR_OR_THRESHOLD
from service.core.errors import ServiceError, invalid
from service.core.ingest import Upload
from service.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place (no `$defs`)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return omit_null_alternatives(inline(schema))


def omit_null_alternatives(schema: dict[str, Any]) -> dict[str, Any]:
    """A request omits an optional field rather than sending null: document `X`, not `X | null`.

    The field's own keywords (description, minItems) move onto `X`, where they apply.
    """
    properties = {}
    for name, field in schema.get("properties", {}).items():
        choices = field.get("anyOf", [])
        kept = [choice for choice in choices if choice != {"type": "null"}]
        if len(choices) == 2 and len(kept) == 1:
            field = {**kept[0], **{k: v for k, v in field.items() if k not in {"anyOf", "default"}}}
        if field.get("type") == "array" and isinstance(field.get("items"), dict):
            field = {**field, "items": omit_null_alternatives(field["items"])}
        properties[name] = field
    return {**schema, "properties": properties} if properties else schema


def json_body(json_model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` of a route that reads its JSON itself with `parse_json`."""
    content = {"application/json": {"schema": _json_schema(json_model)}}
    return {"requestBody": {"required": True, "content": content}}


def request_body(
    json_model: type[BaseModel], file_field: str, form_fields: dict[str, Any], *, many: bool
) -> dict[str, Any]:
    """OpenAPI `requestBody` with a JSON and a multipart alternative."""
    file_schema = {"type": "string", "format": "binary", "minLength": 1}
    multipart = {
        "type": "object",
        "properties": {
            file_field: {"type": "array", "items": file_schema, "minItems": 1}
            if many
            else file_schema,
            **form_fields,
        },
        "required": [file_field, *[name for name in form_fields if name == "subject_id"]],
        "additionalProperties": False,
    }
    if {"fpir", "threshold"} <= form_fields.keys():
        multipart.update(FPIR_OR_THRESHOLD)

    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _json_schema(json_model)},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


async def parse_json(request: Request, model: type[Body]) -> Body:
    body = await request.body()
    try:
        # pydantic's JSON parser (7x faster than json.loads + validation on 32 embeddings);
        # it accepts NaN and Infinity, which reach the embedding check and are rejected there
        # with a reason.
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors()
        if errors and errors[0]["type"] == "json_invalid":
            message = f"request body is not valid JSON: {errors[0]['msg']}"
            raise ServiceError("invalid_json", message) from None
        raise invalid(describe_validation(errors)) from None


@dataclass(frozen=True)
class FilePart:
    """A file of a multipart form, held in memory."""

    data: bytes
    filename: str | None


# Forms up to this size are parsed in memory in one pass (parse_small_form); larger ones stream
# through Starlette's parser, which spools files from this size on to temporary files.
SMALL_FORM_BYTES = 1 << 20
# python-multipart's limits on a part's headers, under which parse_small_form stays.
_MAX_PART_HEADERS = 8
_MAX_HEADER_LINE = 4096


def _decode(data: bytes, charset: str) -> str:
    """Text of a form, decoded as Starlette decodes it (latin-1 when the charset fails)."""
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")


def parse_small_form(
    body: bytes, content_type: str, *, max_files: int, max_fields: int, max_part_size: int
) -> list[tuple[str, str | FilePart]] | None:
    """A multipart/form-data body in memory -> its (name, text or file) items, in order.

    The items are those Starlette's parser gives, without its per-byte state machine, spooled
    file objects and asynchronous reads. Anything but a plain, well-formed body within the
    limits gives None, and Starlette's parser then reads the body and gives its own answer (its
    items, or its error): leading newlines, a preamble or epilogue, the boundary inside a part,
    a part without headers or without a name, odd header lines, too many files or fields, a
    field larger than `max_part_size`.
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    # A boundary with CR or LF could overlap itself, and the count below would miss a match.
    if kind != b"multipart/form-data" or not boundary or b"\r" in boundary or b"\n" in boundary:
        return None
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    opening = b"--" + boundary + b"\r\n"
    delimiter = b"\r\n--" + boundary
    closing = body.rfind(delimiter + b"--")
    if not body.startswith(opening) or closing < len(opening):
        return None
    if body[closing + len(delimiter) + 2 :] not in (b"", b"\r\n"):
        return None
    parts = body[len(opening) : closing].split(delimiter + b"\r\n")
    if body.count(delimiter) != len(parts):
        return None  # the boundary somewhere it does not delimit parts
    items: list[tuple[str, str | FilePart]] = []
    files = fields = 0
    for part in parts:
        head, separator, data = part.partition(b"\r\n\r\n")
        if not separator or not head:
            return None
        lines = head.split(b"\r\n")
        if len(lines) > _MAX_PART_HEADERS:
            return None
        disposition = None
        for line in lines:
            name, colon, value = line.partition(b":")
            if (
                not colon
                or not name
                or name.translate(None, TOKEN_CHARS)
                or len(line) > _MAX_HEADER_LINE
                or b"\r" in value
                or b"\n" in value
            ):
                return None
            if name.lower() == b"content-disposition":
                disposition = value.lstrip(b" ")  # the last one counts, as in Starlette
        if disposition is None:
            return None
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            return None
        field_name = _decode(options[b"name"], charset)
        if b"filename" in options:
            files += 1
            if files > max_files:
                return None
            items.append((field_name, FilePart(data, _decode(options[b"filename"], charset))))
        else:
            fields += 1
            if fields > max_fields or len(data) > max_part_size:
                return None
            items.append((field_name, _decode(data, charset)))
    return items


async def form_items(
    request: Request, *, max_files: int, max_fields: int, max_part_size: int
) -> list[tuple[str, str | FilePart]]:
    """The items of a multipart/form-data request, files in memory: a small body (the size
    of an image or a few) parsed in one pass, anything else by Starlette's parser."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= SMALL_FORM_BYTES:
        items = parse_small_form(
            await request.body(),
            request.headers.get("content-type", ""),
            max_files=max_files,
            max_fields=max_fields,
            max_part_size=max_part_size,
        )
        if items is not None:
            return items
    # Starlette's parser reads the body again from memory when request.body() has read it.
    form = await request.form(
        max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    return [
        (key, FilePart(await value.read(), value.filename))
        if isinstance(value, UploadFile)
        else (key, value)
        for key, value in form.multi_items()
    ]


async def read_form(
    request: Request, settings: Settings, file_field: str, model: type[Body]
) -> tuple[Body, list[Upload]]:
    items = await form_items(
        request,
        max_files=settings.max_items_per_request + 1,
        max_fields=32,
        max_part_size=settings.max_image_bytes + 1,
    )
    uploads: list[Upload] = []
    fields: dict[str, Any] = {}
    for key, value in items:
        if key == file_field:
            if isinstance(value, FilePart):
                uploads.append(Upload(image=value.data, name=value.filename))
            else:
                uploads.append(Upload(image_base64=value))
        elif isinstance(value, str):
            fields[key] = value
        else:
            raise invalid(f"unexpected file in form field {key!r}")
    try:
        return model.model_validate(fields), uploads
    except ValidationError as error:
        raise invalid(describe_validation(error.errors())) from None


def media_type(request: Request) -> str:
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in {"application/json", "multipart/form-data"}:
        return kind
    raise ServiceError(
        "unsupported_media_type",
        f"content type {content_type or '(none)'!r}: send application/json or multipart/form-data",
    )


def uploads_from_json(
    images: list[str] | None, embeddings: list[list[float]] | None
) -> list[Upload]:
    if images is not None and embeddings is not None:
        raise invalid("give either images or embeddings, not both")
    if images is not None:
        return [Upload(image_base64=text) for text in images]
    if embeddings is not None:
        return [Upload(embedding=list(vector)) for vector in embeddings]
    return []

"""Reading images and embeddings from a request: multipart files, JSON base64, or JSON vectors.

Routes that take uploads accept either `multipart/form-data` (repeatable file field) or
`application/json`; their OpenAPI entries describe both (`openapi_extra`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
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


async def read_form(
    request: Request, settings: Settings, file_field: str, model: type[Body]
) -> tuple[Body, list[Upload]]:
    form = await request.form(
        max_files=settings.max_items_per_request + 1,
        max_fields=32,
        max_part_size=settings.max_image_bytes + 1,
    )
    uploads: list[Upload] = []
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == file_field:
            if isinstance(value, UploadFile):
                uploads.append(Upload(image=await value.read(), name=value.filename))
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

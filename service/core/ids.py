"""Identifier rules (design §4): gallery names and subject ids.

1-256 characters of printable Unicode ("José" is valid), no `/`, no control characters, and
neither `.` nor `..` (they would be path segments). Anything else is a 422.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

MAX_ID_LENGTH = 256

# What the OpenAPI document says of an id. JSON Schema cannot say "printable Unicode", so the
# pattern admits letters and digits of any script, space and common punctuation: every id it
# admits is valid; a few valid ids (other printable symbols) fall outside it.
ID_JSON_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": r"^(?!\.{1,2}$)[\w .,:;@+=~()!'-]+$",
    "description": f"1-{MAX_ID_LENGTH} characters of printable Unicode, no '/', not '.' or "
    "'..' (the pattern shows the common case)",
}


def check_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"must be 1-{MAX_ID_LENGTH} characters, got {len(value)}")
    if "/" in value:
        raise ValueError("must not contain '/'")
    if value in {".", ".."}:
        raise ValueError("must not be '.' or '..'")
    if not value.isprintable():
        raise ValueError("must contain printable characters only (no control characters)")
    return value


Identifier = Annotated[str, AfterValidator(check_id), WithJsonSchema(ID_JSON_SCHEMA)]

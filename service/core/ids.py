"""Identifier rules (design §4): gallery names and subject ids.

1-256 characters of printable Unicode ("José" is valid), no `/`, no control characters, and
neither `.` nor `..` (they would be path segments). Anything else is a 422.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

MAX_ID_LENGTH = 256


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


Identifier = Annotated[str, AfterValidator(check_id)]

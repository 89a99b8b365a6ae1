"""Database URLs in messages: never with their `user:password@` part."""

from __future__ import annotations


def redact_url(url: str) -> str:
    """The URL without its `user:password@` part, for messages and logs."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    if rest.startswith("/"):  # no authority part, so no credentials (sqlite:///path)
        return url
    at = rest.rfind("@")  # the last '@': a password may itself hold an unescaped '@'
    return url if at < 0 else f"{head}{separator}{rest[at + 1 :]}"

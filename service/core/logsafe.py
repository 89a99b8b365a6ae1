"""Text made safe to log: control characters escaped, so one record stays one line.

A URL, an id or a name comes from a client; written raw, `%0A` or `%1B` in it would forge
log lines or drive the reader's terminal.
"""

from __future__ import annotations

import logging
import re

# C0, DEL, C1, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: object) -> str:
    """`text` as a string with every control character written as an escape."""
    return _CONTROL.sub(_escape_one, str(text))


class EscapingFormatter(logging.Formatter):
    """A formatter whose messages never hold a raw control character.

    The message is escaped; a traceback (exc_info) is left multi-line, as a reader expects.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)

"""Handing freed C-heap memory back to the system.

glibc keeps freed heap for reuse, so a process that once held large buffers (decoded images
of a big request; the embeddings read while building an index) keeps its peak size for good
unless asked to return it (measured in docs/service.md and docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to call
        return None


def release_free_memory() -> None:
    """Hand free C-heap memory back to the system (glibc's malloc_trim; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]

"""Handing freed C-heap memory back to the system.

glibc keeps freed heap for reuse, so a process that once held large buffers (decoded images
of a big request; the embeddings read while building an index) keeps its peak size for good
unless asked to return it (measured in docs/service.md and docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the block, on again at its end if it was on.

    A bulk request allocates tens of thousands of small containers that live until it ends
    (parsed items, lists of floats, per-item records): each collection in between scans them
    and frees nothing, and promoting them wakes full collections of the whole heap. Reference
    counting still frees everything else at once. Concurrent blocks need no count: the one
    that found the collector on turns it back on at its end, so a pause lasts at most one
    block, and the collector is on once every block has ended.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

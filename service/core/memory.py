"""Handing freed C-heap memory back to the system, and keeping the garbage collector's work
to what requests allocate.

glibc keeps freed heap for reuse, so a process that once held large buffers (decoded images
of a big request; the embeddings read while building an index) keeps its peak size for good
unless asked to return it (measured in docs/service.md and docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
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


class _CollectorPause:
    """The cyclic garbage collector off for a block, on again once every paused block has
    ended (if it was on when the first began).

    A bulk request allocates tens of thousands of small containers that live until it ends
    (parsed items, lists of floats, per-item records): each collection in between scans them
    and frees nothing, and promoting them wakes full collections of the whole heap. Reference
    counting still frees everything else at once. Overlapping blocks share one pause: one
    that ended early must not turn the collector on over the others' items.
    """

    # Blocks that overlap without end (steady bulk load from several clients) would keep the
    # collector off for good: after this long, a block that ends collects the young
    # generations, which hold every object made since the pause began (or since its last
    # such collection), cycles included. Such a collection scans the live items of every
    # request in flight (about 80 ms with four of 5,000 embeddings): every 5 s it costs a
    # few ms per request, every second 20.
    max_pause_s = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._restore = False  # the collector was on when the pause began
        self._since = 0.0  # when the pause began, or its last collection

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._restore = gc.isenabled()
                self._since = time.monotonic()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            collect = False
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    if self._restore:
                        gc.enable()
                elif time.monotonic() - self._since >= self.max_pause_s:
                    self._since = time.monotonic()
                    collect = self._restore
            if collect:  # outside the lock: a finaliser may enter a paused block
                gc.collect(1)


paused_gc = _CollectorPause()  # `with paused_gc():` around a bulk request's work


def freeze_start_up_objects() -> None:
    """Collect once, then leave every object alive now out of later collections (gc.freeze).

    What a server builds at start (modules, the app, its state, the indexes' Python side)
    lives as long as the process. Left to the collector, the full collections that the
    start-up's many new objects set due run under load and walk all of it: tens of ms in
    which every request in flight stands still (docs/benchmarks.md). Frozen objects are never
    collected, so this is for a process's start, not for objects that may become garbage.
    """
    gc.collect()
    gc.freeze()

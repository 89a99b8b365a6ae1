"""Advisory file locks between the processes of one machine: `flock`, which the kernel
releases when the file is closed, or when its holder dies."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


def lock_file(path: Path, *, wait: bool = True) -> IO[bytes] | None:
    """`path` (created if missing) opened and locked exclusively; closing it releases the lock.
    Each call opens the file anew, so two calls of one process exclude each other too. With
    `wait=False`, None at once when another open file holds the lock."""
    handle = open(path, "a+b")  # noqa: SIM115 - the caller owns it: closing it unlocks
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return handle

"""paused_gc: the collector off inside a block, and on again once every block has ended."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from service.core.memory import paused_gc


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_on_after() -> None:
    gc.enable()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_is_on_again_after_an_exception() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize("first_to_end", ["first", "second"])
def test_overlapping_blocks_in_two_threads_leave_the_collector_on(first_to_end: str) -> None:
    gc.enable()
    entered = {name: threading.Event() for name in ("first", "second")}
    leave = {name: threading.Event() for name in ("first", "second")}
    left = {name: threading.Event() for name in ("first", "second")}

    def block(name: str) -> None:
        with paused_gc():
            entered[name].set()
            leave[name].wait(10)
        left[name].set()

    threads = {name: threading.Thread(target=block, args=(name,)) for name in entered}
    threads["first"].start()
    assert entered["first"].wait(10)
    threads["second"].start()
    assert entered["second"].wait(10)
    assert not gc.isenabled()
    last_to_end = "second" if first_to_end == "first" else "first"
    leave[first_to_end].set()
    assert left[first_to_end].wait(10)
    leave[last_to_end].set()
    for thread in threads.values():
        thread.join(10)
    assert gc.isenabled()

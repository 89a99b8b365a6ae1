"""paused_gc: the collector off while any paused block runs, on again once all have ended;
freeze_start_up_objects: what lives at start is left out of later collections."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from service.core.memory import freeze_start_up_objects, paused_gc


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


class _Blocks:
    """Paused blocks in threads, each entered and left when the test says."""

    def __init__(self, names: list[str]) -> None:
        self.entered = {name: threading.Event() for name in names}
        self.leave = {name: threading.Event() for name in names}
        self.left = {name: threading.Event() for name in names}
        self.threads = {name: threading.Thread(target=self._block, args=(name,)) for name in names}

    def _block(self, name: str) -> None:
        with paused_gc():
            self.entered[name].set()
            self.leave[name].wait(10)
        self.left[name].set()

    def enter(self, name: str) -> None:
        self.threads[name].start()
        assert self.entered[name].wait(10)

    def end(self, name: str) -> None:
        self.leave[name].set()
        assert self.left[name].wait(10)
        self.threads[name].join(10)


@pytest.mark.parametrize("first_to_end", ["first", "second"])
def test_overlapping_blocks_keep_the_collector_off_until_both_have_ended(
    first_to_end: str,
) -> None:
    gc.enable()
    blocks = _Blocks(["first", "second"])
    blocks.enter("first")
    blocks.enter("second")
    blocks.end(first_to_end)
    assert not gc.isenabled()  # the other block's objects are still live
    blocks.end("second" if first_to_end == "first" else "first")
    assert gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_a_long_pause_collects_the_cycles_made_during_it(monkeypatch: pytest.MonkeyPatch) -> None:
    gc.enable()
    monkeypatch.setattr(paused_gc, "max_pause_s", 0.0)
    blocks = _Blocks(["long", "short"])
    blocks.enter("long")
    node = _Node()
    freed = weakref.ref(node)
    del node
    assert freed() is not None  # a cycle: not freed by reference counting
    blocks.enter("short")
    blocks.end("short")  # the pause is past max_pause_s: this end collects
    assert freed() is None
    assert not gc.isenabled()  # the long block still runs
    blocks.end("long")
    assert gc.isenabled()


def test_freezing_collects_the_garbage_first_and_then_leaves_the_living_out() -> None:
    node = _Node()
    dead = weakref.ref(node)
    del node
    living = _Node()
    try:
        freeze_start_up_objects()
        assert dead() is None
        made_after = _Node()
        tracked = {id(obj) for obj in gc.get_objects()}  # every generation, frozen excluded
        assert id(living) not in tracked
        assert id(made_after) in tracked
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

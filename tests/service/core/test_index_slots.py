"""The index slots of `serve --workers N`: one directory per living worker process."""

from __future__ import annotations

from pathlib import Path

from service.core.state import claim_index_slot


def test_claimers_get_distinct_slots_and_a_released_slot_is_taken_again(tmp_path: Path) -> None:
    first, first_lock = claim_index_slot(tmp_path)
    second, second_lock = claim_index_slot(tmp_path)
    assert first == tmp_path / "index" / "worker-0"
    assert second == tmp_path / "index" / "worker-1"
    first_lock.close()  # the worker of slot 0 stops (or dies: the kernel closes its files)
    again, again_lock = claim_index_slot(tmp_path)
    third, third_lock = claim_index_slot(tmp_path)
    assert again == first
    assert third == tmp_path / "index" / "worker-2"  # slots 0 and 1 are held
    for lock in (second_lock, again_lock, third_lock):
        lock.close()

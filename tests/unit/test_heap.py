"""The serving process's collector settings (agent_fabric/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent_fabric import heap


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_young_generation_waits_longer_and_the_older_keep_their_ratios(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    heap.tune_collector()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)


def test_objects_alive_at_startup_are_left_out_of_collections_and_garbage_is_not(collector: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    survivor = Node()
    garbage = Node()
    collected: list[object] = []
    gc.callbacks.append(lambda phase, info: collected.append(info["collected"]) if phase == "stop" else None)
    try:
        del garbage
        heap.freeze_startup_objects()
    finally:
        gc.callbacks.pop()
    assert sum(collected) >= 1  # the unreachable cycle went before the freeze
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # frozen: no generation holds it

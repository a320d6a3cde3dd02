"""The serving process's garbage collector: rare full collections, startup objects left out.

A process holding a backlog (20,000 fetched tasks per class) keeps hundreds of thousands of
objects alive, and with CPython's default thresholds (700, 10, 10) it ran a full collection
every few seconds under load, each 130-340 ms of CPU in which the event loop stood still: every
task in flight, a critical one included, waited for it (scripts/bench/scheduling.py traced those
pauses as the publish -> `running` outliers). Almost everything here is freed by reference
counting, so a larger first threshold costs little memory and lets short-lived cycles die in the
youngest generation; the objects that exist once the process is up (modules, schemas, compiled
statements) live as long as the process and are moved out of the collector's view.
"""

from __future__ import annotations

import gc

# Collections of the youngest generation once this many more container objects are alive than
# at the last one (CPython's default: 700). The older generations keep CPython's ratios, so a
# full collection still runs, about a hundred times less often.
YOUNG_THRESHOLD = 50_000


def tune_collector() -> None:
    """Call once, before serving."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def freeze_startup_objects() -> None:
    """Call once the process is up: what is alive now stays alive, so no collection need walk it.
    (Garbage among it is collected first.)"""
    gc.collect()
    gc.freeze()

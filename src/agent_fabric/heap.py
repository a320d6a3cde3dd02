"""The garbage collector of the `serve` process, set for a long-running service under load.

CPython's cyclic collector scans the young container objects every 700 net allocations and, every
so often, the whole heap. In `serve` that heap holds some 300,000 objects made at start-up
(modules, pydantic schemas, SQLAlchemy metadata) that live as long as the process: measured under
the throughput benchmark (issue 14), collection took 6.5 of the process's 17.6 CPU seconds, 25
full collections of about 0.2 s each. So once the fabric is up: collect once, freeze what
survives (the collector no longer scans it; reference counting still frees it), and collect the
young generation every 50,000 net allocations (a few MB of garbage cycles wait longer; the
objects of the tasks in flight are scanned far less often). The same pauses were the outliers of
a critical task's publish -> `running` behind a backlog (scripts/bench/scheduling.py): a full
collection stopped the event loop for 130-340 ms of CPU every few seconds while 10-20k fetched
tasks were held. Embedding applications and tests keep their own collector settings: only
`agent-fabric serve` calls this.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 20)


def settle_after_startup() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)

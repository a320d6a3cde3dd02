"""The garbage collector of the `serve` process, set for a long-running service under load.

CPython's cyclic collector scans the young container objects every 700 net allocations and, every
so often, the whole heap. In `serve` that heap holds some 300,000 objects made at start-up
(modules, pydantic schemas, SQLAlchemy metadata) that live as long as the process: measured under
the throughput benchmark (issue 14), collection took 6.5 of the process's 17.6 CPU seconds, 25
full collections of about 0.2 s each. So once the fabric is up: collect once, freeze what
survives (the collector no longer scans it; reference counting still frees it), and collect the
young generation every 10,000 net allocations, the middle one every 100 young collections and the
whole heap every 20 of those: the older generations at the same pace per allocation as before.
The same pauses were the outliers of a critical task's publish -> `running` behind a backlog
(scripts/bench/scheduling.py): a full collection stopped the event loop for 130-340 ms of CPU
every few seconds while 10-20k fetched tasks were held. A young threshold of 50,000 then left
young collections of up to 175,000 objects (the tasks in flight and being read, alive at that
moment) that held the loop for up to 120-130 ms; at 10,000 the longest measured 35 ms, for about
1 % more collector CPU and no change in CPU per task beyond the runs' spread (issue 14, README
Benchmarks). Embedding applications and tests keep their own collector settings: only
`agent-fabric serve` calls this.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (100, 20)


def settle_after_startup() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)

"""The result sweep: every finished task's result is published and noted so, even after a crash.

A result is published, the task message acked, and then the task is noted `result_published`.
A replica killed between the publish and the ack leaves the message unacked, and its
redelivery publishes the result; killed between the ack and the note, nothing would ever come
back to it: the result is out, but the row says otherwise for good. And a task whose message
ran out of deliveries before its result went out would have none. Any replica's sweep finds
such rows once they are older than a grace period (the live owner notes them within
milliseconds), publishes each result only if AGENT_STATUS does not hold it already (so no
subscriber sees it twice), and notes it. Rows are taken with SKIP LOCKED, so replicas sweeping
together split them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import not_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.outbound.results import ResultPublisher
from agent_fabric.periodic import Periodic
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_rows import TERMINAL_VALUES, TaskRecord, utcnow
from agent_fabric.telemetry.metrics import FabricMetrics

log = logging.getLogger(__name__)

BATCH = 50
# Older results are left alone: the stream may no longer hold them, so a look into it could not
# tell a lost publish from an expired one, and a day-old result sent now would surprise more
# than it helps. Redelivery covers a task whose message is still in the stream.
LOOK_BACK = timedelta(days=1)


class ResultSweeper:
    """`sweep()` is the step; `periodic()` runs it every few seconds on every replica."""

    def __init__(
        self, engine: AsyncEngine, results: ResultPublisher, metrics: FabricMetrics, *, grace_seconds: float = 30.0
    ) -> None:
        self._engine = engine
        self._results = results
        self._metrics = metrics
        self._grace = timedelta(seconds=grace_seconds)

    def periodic(self, every_seconds: float = 10.0) -> Periodic:
        return Periodic("result-sweep", every_seconds, self.sweep)

    async def sweep(self) -> int:
        """Publish (where missing) and note every result left unnoted; returns how many were noted."""
        total = 0
        while True:
            now = utcnow()
            async with self._engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(tasks)
                        # Spelled as the partial index's predicate, so the index serves it.
                        .where(not_(tasks.c.result_published), tasks.c.finished_at.is_not(None))
                        .where(tasks.c.finished_at < now - self._grace, tasks.c.finished_at > now - LOOK_BACK)
                        .where(tasks.c.status.in_(TERMINAL_VALUES))
                        .order_by(tasks.c.finished_at)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                noted: list[tuple[str, str]] = []
                failure: Exception | None = None
                for row in rows:
                    record = TaskRecord.from_row(row)
                    try:
                        await self._results.publish_result(record, again=True)
                    except Exception as exc:
                        failure = exc
                        break
                    noted.append((record.tenant_id, record.job_id))
                if noted:
                    await conn.execute(
                        update(tasks)
                        .where(tuple_(tasks.c.tenant_id, tasks.c.job_id).in_(noted))
                        .values(result_published=True)
                    )
            if noted:
                self._metrics.results_swept.inc(len(noted))
                log.warning("results of finished tasks were never noted published; swept", extra={"count": len(noted)})
            if failure is not None:
                raise failure
            total += len(noted)
            if len(rows) < BATCH:
                return total

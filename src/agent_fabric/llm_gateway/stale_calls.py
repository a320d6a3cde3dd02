"""Reservations of calls that never settled: their replica died mid-call (or a stream was dropped
before it started). Without this, such a reservation would hold its budget's room for good.

Every replica, every minute: a `llm:<call>` ledger entry still reserved after the longest a call
may take (LLM_UPSTREAM_TIMEOUT_SECONDS plus a minute) is settled with its estimate as its usage,
since the call may well have run upstream and the estimate bounds what it could cost; the fold
then moves it into the budgets. Idempotent: only entries still `reserved` are touched.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.periodic import Periodic
from agent_fabric.storage.budget_ledger import RESERVED, SETTLED
from agent_fabric.storage.tables import budget_ledger
from agent_fabric.storage.task_store import utcnow

SWEEP_SECONDS = 60.0
MARGIN = timedelta(seconds=60)


class StaleCallSweeper:
    def __init__(self, engine: AsyncEngine, upstream_timeout_seconds: float) -> None:
        self._engine = engine
        self._after = timedelta(seconds=upstream_timeout_seconds) + MARGIN
        self._loop = Periodic("llm-stale-calls", SWEEP_SECONDS, self.sweep)

    async def sweep(self) -> int:
        """Settle stale call reservations at their estimate; how many there were."""
        now = utcnow()
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(budget_ledger)
                .where(
                    budget_ledger.c.state == RESERVED,
                    budget_ledger.c.job_id.startswith("llm:"),
                    budget_ledger.c.created_at < now - self._after,
                )
                .values(state=SETTLED, used=budget_ledger.c.estimate, settled_at=now)
            )
        return int(result.rowcount or 0)

    def start(self) -> None:
        self._loop.start()

    async def shutdown(self) -> None:
        await self._loop.stop()

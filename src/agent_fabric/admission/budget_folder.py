"""Folding settled usage into the budgets, and the alerts that raises (FR-BUD-3, FR-BUD-4).

Every BUDGET_FOLD_INTERVAL_SECONDS any replica takes settled ledger rows (SKIP LOCKED, so
replicas split them), locks the budgets they touch in key order, rolls periods over, adds the
usage, releases the reservations, and raises every threshold the usage crossed and has not
announced in this period: an agent.alerts.budget event (outbox) and an audit entry, written in
the same transaction as the `alerts_sent` that makes each one happen once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.admission import budget_reports as reports
from agent_fabric.admission.budget_math import BudgetState, due_alerts, usage_ratio
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.storage import budget_ledger as ledger
from agent_fabric.storage import budget_store as bs
from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.outbox import enqueue
from agent_fabric.storage.task_store import utcnow
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

FOLD_BATCH = 5000
Alert = tuple[bs.Key, BudgetState, float]


class BudgetFolder:
    def __init__(
        self,
        batcher: WriteBatcher,
        interval: float,
        tenants: TenantRegistry,
        metrics: FabricMetrics,
    ) -> None:
        self._batcher = batcher
        self._interval = interval
        self._tenants = tenants
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def fold(self) -> int:
        """One fold; how many ledger rows it took."""
        folded: ledger.Folded = await self._batcher.submit(self._fold_op, utcnow())
        for (tenant_id, entity), state in folded.states.items():
            if state.limits.any:
                self._metrics.budget_usage_ratio.labels(reports.metric_entity(tenant_id, entity)).set(
                    usage_ratio(state)
                )
        return folded.rows

    async def _fold_op(self, conn: AsyncConnection, items: Sequence[datetime]) -> list[ledger.Folded]:
        now = items[-1]
        taken, changes = await ledger.take_deltas(conn, FOLD_BATCH)
        if not taken:
            return [ledger.Folded({}, 0)] * len(items)
        locked = await bs.lock_budgets(conn, set(changes), now)
        alerts: list[Alert] = []
        for key, (used, released) in changes.items():
            if key not in locked.states:
                locked.states[key] = bs.tracking_state(now)
            state = locked.rolled(key, now)
            state = replace(state, used=state.used + used, reserved=state.reserved - released)
            due = due_alerts(state)
            locked.states[key] = replace(state, alerts_sent=(*state.alerts_sent, *due))
            alerts.extend((key, locked.states[key], threshold) for threshold in due)
        await bs.write_budgets(conn, locked, set(changes), now)
        await self._raise_alerts(conn, alerts)
        return [ledger.Folded({k: locked.states[k] for k in changes}, taken, len(alerts))] * len(items)

    async def _raise_alerts(self, conn: AsyncConnection, alerts: list[Alert]) -> None:
        if not alerts:
            return
        messages, entries = [], []
        for (tenant_id, entity), state, threshold in alerts:
            mode = self._tenants.mode_for(tenant_id)
            message = reports.alert_message(tenant_id, entity, state, threshold, mode)
            messages.append(message)
            entries.append(
                AuditEntry(
                    "budget.exceeded" if threshold >= 100 else "budget.warning",
                    "system",
                    tenant_id,
                    mode,
                    request={"entity": entity, "threshold_percent": threshold},
                    response={"event_id": message.msg_id, "used": state.used.as_dict()},
                )
            )
        await enqueue(conn, *messages)
        await append(conn, *entries)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="budget-fold")

    async def shutdown(self) -> None:
        """Stop after a last fold (settled usage waits in the ledger either way). Idempotent."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self.fold()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                while await self.fold() >= FOLD_BATCH:
                    pass
            except Exception as exc:
                log.warning("budget fold failed; retrying", extra={"error": str(exc)[:300]})

"""Budgets (FR-BUD-1..6): reserve an estimate before a task runs, settle its usage after, alert, report.

- Every task counts against its tenant, its agent and (when it names one in `metadata.user`) its
  user; tokens, compute seconds and cost in USD as the driver reported them.
- Admission reserves the task's estimate (`metadata.estimate_tokens|_compute_seconds|_cost_usd`,
  else AGENT_FABRIC_BUDGET_ESTIMATE_*) on each of those budgets that has limits, all or nothing:
  used + reserved + estimate must stay within the limit. LIVE tenants are refused with
  `budget_exceeded`; SANDBOX tenants are admitted and the overrun is audited.
- The transaction that records the task's outcome settles its usage in the ledger; a fold loop
  (any replica) moves settled usage into the budget rows, releases the reservation, and raises
  each threshold's alert once per period.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.admission import budget_reports as reports
from agent_fabric.admission.budget_config import BudgetConfig
from agent_fabric.admission.budget_folder import BudgetFolder
from agent_fabric.admission.budget_math import (
    Amounts,
    BudgetState,
    exceeded_dimension,
    period_start,
    roll,
)
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.errors import BudgetExceeded
from agent_fabric.settings import BudgetSettings
from agent_fabric.storage import budget_ledger as ledger
from agent_fabric.storage import budget_store as bs
from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.tables import budgets
from agent_fabric.storage.task_store import TaskRecord, utcnow
from agent_fabric.tasks import TaskSpec
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

Announce = Callable[[str], Awaitable[None]]

_ESTIMATE_KEYS = ("estimate_tokens", "estimate_compute_seconds", "estimate_cost_usd")


class BudgetManager:
    @property
    def refusal_status(self) -> int:
        """HTTP status of a budget_exceeded refusal (BUDGET_HTTP_STATUS: 402 or 429)."""
        return self._cfg.http_status

    def __init__(
        self,
        engine: AsyncEngine,
        batcher: WriteBatcher,
        cfg: BudgetSettings,
        tenants: TenantRegistry,
        audit: AuditWriter,
        metrics: FabricMetrics,
        announce: Announce,
    ) -> None:
        self._engine = engine
        self._announce = announce
        self._batcher = batcher
        self._cfg = cfg
        self._tenants = tenants
        self._audit = audit
        self._metrics = metrics
        self._limited: set[bs.Key] = set()
        self.folder = BudgetFolder(batcher, cfg.fold_interval_seconds, tenants, metrics)

    # -- what applies to a task (in memory) --

    async def reload(self) -> None:
        """Which budgets have limits; only tasks touching one of them pay for a reservation."""
        self._limited = await bs.limited_budgets(self._engine)

    @property
    def writer(self) -> WriteBatcher:
        """The writer budget transactions go through (the LLM gateway reserves each call on it)."""
        return self._batcher

    def has_limits(self, tenant_id: str, entities: Sequence[str]) -> bool:
        """Whether any of these budgets has a limit (only then is a reservation worth its write)."""
        return any((tenant_id, e) in self._limited for e in entities)

    def entities_for(self, spec: TaskSpec) -> tuple[str, ...]:
        return reports.task_entities(spec.tenant_id, spec.agent_definition.label, spec.metadata.get("user"))

    def estimate_for(self, spec: TaskSpec) -> Amounts:
        defaults = (self._cfg.estimate_tokens, self._cfg.estimate_compute_seconds, self._cfg.estimate_cost_usd)
        values = []
        for key, default in zip(_ESTIMATE_KEYS, defaults, strict=True):
            try:
                values.append(max(0.0, float(spec.metadata.get(key, default))))
            except ValueError:
                values.append(float(default))
        return Amounts(*values)

    # -- the admission gate --

    async def reserve(self, spec: TaskSpec, *, actor: str) -> None:
        """Reserve the task's estimate, or raise BudgetExceeded (LIVE tenants only)."""
        entities = self.entities_for(spec)
        if not any((spec.tenant_id, e) in self._limited for e in entities):
            return
        mode = self._tenants.mode_for(spec.tenant_id)
        estimate = self.estimate_for(spec)
        item = ledger.ReserveItem(spec.tenant_id, spec.job_id, entities, estimate, mode == "LIVE", utcnow())
        outcome: ledger.ReserveOutcome = await self._batcher.submit(ledger.reserve_op, item)
        if outcome.over is None:
            return
        entity, dimension = outcome.over
        self._audit.record(
            AuditEntry(
                "budget.over_limit",
                actor,
                spec.tenant_id,
                mode,
                request={"job_id": spec.job_id, "estimate": estimate.as_dict(), "entities": list(entities)},
                response={"entity": entity, "dimension": dimension, "enforced": not outcome.admitted},
                cost_usd=estimate.cost_usd,
            )
        )
        if outcome.admitted:
            return
        self._metrics.budget_refusals.inc()
        state = outcome.state
        detail = ""
        if state is not None:
            committed = state.used.get(dimension) + state.reserved.get(dimension)
            detail = f": {committed:g} of {state.effective_limit(dimension):g} used or reserved"
        refusal = BudgetExceeded(
            f"budget {entity!r} of tenant {spec.tenant_id!r} has no room for this task's {dimension}{detail}",
            job_id=spec.job_id,
            tenant_id=spec.tenant_id,
        )
        refusal.status = self.refusal_status
        refusal.extra = {"entity": entity, "dimension": dimension, "mode": mode}
        raise refusal

    async def release(self, tenant_id: str, job_id: str) -> None:
        """Give back a reservation whose task will never run (its submission failed)."""
        await self._batcher.submit(_settle_op, ledger.Settlement(tenant_id, job_id, (), Amounts()))

    async def settle_finished(self, conn: AsyncConnection, records: Sequence[TaskRecord]) -> None:
        """A FinishHook: the tasks' usage enters the ledger in the transaction that finishes them."""
        items = []
        for r in records:
            user = (r.spec.get("metadata") or {}).get("user") if isinstance(r.spec, dict) else None
            used = _unmetered(r.usage)
            items.append(
                ledger.Settlement(r.tenant_id, r.job_id, reports.task_entities(r.tenant_id, r.agent_label, user), used)
            )
        await ledger.settle(conn, items, utcnow())

    # -- folding (BudgetFolder runs the loop) --

    async def fold(self) -> int:
        return await self.folder.fold()

    def start(self) -> None:
        self.folder.start()

    async def shutdown(self) -> None:
        await self.folder.shutdown()

    # -- the seed's BudgetManager interface and the API's reads and writes --

    async def track(self, tenant_id: str, agent_id: str, usage: Amounts, user: str | None = None) -> None:
        """Record usage outside a task (a driver's side call); folded like task usage."""
        job = f"track:{uuid.uuid4().hex}"
        entities = reports.task_entities(tenant_id, agent_id, user)
        await self._batcher.submit(_settle_op, ledger.Settlement(tenant_id, job, entities, usage))

    async def check_budget(self, tenant_id: str, agent_id: str, estimated: Amounts, user: str | None = None) -> bool:
        """Would `estimated` fit on every budget of this agent (and user) now? Reserves nothing."""
        now = utcnow()
        for entity in reports.task_entities(tenant_id, agent_id, user):
            stored = await self._stored(tenant_id, entity)
            if stored is not None and exceeded_dimension(roll(stored, now)[0], estimated) is not None:
                return False
        return True

    async def get_usage(self, tenant_id: str, entity: str, period: str | date = "current") -> dict[str, Any]:
        """The current period (with its projection), "previous", or the period holding a date."""
        now = utcnow()
        stored = await self._stored(tenant_id, entity)
        state, just_closed = roll(stored, now) if stored else (bs.tracking_state(now), None)
        mode = self._tenants.mode_for(tenant_id)
        if period == "current":
            return reports.current_report(tenant_id, entity, state, mode, now)
        if period == "previous":
            wanted = period_start(state.period_start - timedelta(microseconds=1), state.period)
        else:
            assert isinstance(period, date)
            wanted = period_start(datetime(period.year, period.month, period.day, tzinfo=UTC), state.period)
        if wanted == state.period_start:
            return reports.current_report(tenant_id, entity, state, mode, now)
        if just_closed is not None and just_closed.start == wanted:
            return reports.closed_report(tenant_id, entity, just_closed)
        closed = await bs.closed_period(self._engine, tenant_id, entity, wanted)
        if closed is None:
            return {"tenant_id": tenant_id, "entity": entity, "period_start": wanted, "closed": True, "found": False}
        return reports.closed_report(tenant_id, entity, closed)

    async def list_budgets(self, tenant_id: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            reports.current_report(t, e, roll(state, now)[0], self._tenants.mode_for(t), now)
            for (t, e), state in await bs.budget_rows(self._engine, tenant_id, limit, offset)
        ]

    async def configure(
        self, conn: AsyncConnection, tenant_id: str, entity: str, config: BudgetConfig, *, actor: str
    ) -> None:
        """Set a budget's limits in the caller's transaction (audited there). Counters are left
        alone, so a concurrent reservation or fold is never overwritten; a changed period applies
        from the next rollover. Call reload() after the commit and announce "budgets"."""
        now = utcnow()
        values = {
            "limits": config.limits.as_dict(),
            "period": config.period,
            "carryover": config.carryover,
            "alert_threshold_percent": config.alert_threshold_percent,
            "updated_at": now,
        }
        fresh = bs.row_from_state(bs.tracking_state(now), now)
        insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = insert_(budgets).values(
            tenant_id=tenant_id, entity=entity, **{**fresh, **values, "period_start": period_start(now, config.period)}
        )
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=[budgets.c.tenant_id, budgets.c.entity], set_=values)
        )
        await append(
            conn,
            AuditEntry(
                "budget.updated",
                actor,
                tenant_id,
                self._tenants.mode_for(tenant_id),
                request={"entity": entity, **config.model_dump(mode="json")},
            ),
        )

    async def update(self, tenant_id: str, entity: str, config: BudgetConfig, *, actor: str) -> dict[str, Any]:
        """Set a budget's limits (audited), apply here, announce to every replica; the new report."""
        async with self._engine.begin() as conn:
            await self.configure(conn, tenant_id, entity, config, actor=actor)
        await self.applied()
        return await self.get_usage(tenant_id, entity)

    async def applied(self) -> None:
        await self.reload()
        await self._announce("budgets")

    async def config_of(self, tenant_id: str, entity: str) -> BudgetConfig | None:
        stored = await self._stored(tenant_id, entity)
        if stored is None:
            return None
        limits = stored.limits
        return BudgetConfig(
            max_tokens=None if limits.tokens is None else int(limits.tokens),
            max_compute_seconds=limits.compute_seconds,
            max_cost_usd=limits.cost_usd,
            period=stored.period,
            carryover=stored.carryover,
            alert_threshold_percent=stored.alert_threshold_percent,
        )

    async def _stored(self, tenant_id: str, entity: str) -> BudgetState | None:
        return await bs.stored_state(self._engine, tenant_id, entity)


def _unmetered(usage: dict[str, Any] | None) -> Amounts:
    """A task's usage less what the LLM gateway metered: the gateway settled its calls' usage one by
    one as they happened (llm_gateway/budget_guard.py); the task's usage repeats them for its
    report, not for its budgets. `Amounts.from_dict(usage) - metered` in one step (no dimension
    below 0), without the three Amounts between: it runs for every finished task."""
    if not usage:
        return Amounts()
    get = usage.get
    return Amounts(
        max(0.0, float(get("tokens") or 0.0) - float(get("gateway_tokens") or 0.0)),
        max(0.0, float(get("compute_seconds") or 0.0)),
        max(0.0, float(get("cost_usd") or 0.0) - float(get("gateway_cost_usd") or 0.0)),
    )


async def _settle_op(conn: AsyncConnection, items: Sequence[ledger.Settlement]) -> list[None]:
    await ledger.settle(conn, items, utcnow())
    return [None] * len(items)

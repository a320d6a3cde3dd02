"""Budgets that bind each call: reserve its estimate before it goes upstream, settle its usage after.

A task may also bound its own model spend: `metadata.llm_max_tokens` / `metadata.llm_max_cost_usd`
become the budget `task:<job_id>` when its key is minted (task_access.py), checked with the others.

Each call is a ledger entry of its own (`llm:<call id>`), reserved with the same atomic
all-or-nothing reservation admission uses (storage/budget_ledger.reserve_op, which locks the
budget rows), on the budgets of the key's tenant, agent and user. The estimate is the request's
prompt (estimator.py) plus its max_tokens. After the call its real usage settles the entry and a
fold moves it into the budgets at once, so the next call, on any replica, sees exactly what was
spent. In LIVE mode a call that does not fit is refused; SANDBOX admits it and audits the overrun.
Soft thresholds raise the budget alerts through the same fold (budget_folder.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.admission import budget_reports as reports
from agent_fabric.admission.budget import BudgetManager
from agent_fabric.admission.budget_math import Amounts
from agent_fabric.audit.entries import AuditEntry
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.llm_gateway.metering import insert_calls
from agent_fabric.storage import budget_ledger as ledger
from agent_fabric.storage.task_store import utcnow
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry


@dataclass(frozen=True, slots=True)
class CallReservation:
    tenant_id: str
    ledger_id: str
    entities: tuple[str, ...]
    limited: bool  # some budget of these entities has a limit: fold right after settling


def task_entity(job_id: str) -> str:
    return f"task:{job_id}"[:200]


class BudgetRefused(Exception):
    def __init__(self, message: str, entity: str, dimension: str) -> None:
        super().__init__(message)
        self.message = message
        self.entity = entity
        self.dimension = dimension


class BudgetGuard:
    def __init__(
        self, budgets: BudgetManager, tenants: TenantRegistry, audit: AuditWriter, metrics: FabricMetrics
    ) -> None:
        self._budgets = budgets
        self._tenants = tenants
        self._audit = audit
        self._metrics = metrics

    async def reserve(self, grant: KeyGrant, call_id: str, estimate: Amounts) -> CallReservation:
        """Reserve the call's estimate, or raise BudgetRefused (LIVE tenants only)."""
        entities = reports.task_entities(grant.tenant_id, grant.agent_label, grant.user)
        if grant.task_budget and grant.job_id is not None:
            entities = (*entities, task_entity(grant.job_id))
        limited = grant.task_budget or self._budgets.has_limits(grant.tenant_id, entities)
        reservation = CallReservation(grant.tenant_id, f"llm:{call_id}", entities, limited)
        if not reservation.limited:
            return reservation
        mode = self._tenants.mode_for(grant.tenant_id)
        item = ledger.ReserveItem(grant.tenant_id, reservation.ledger_id, entities, estimate, mode == "LIVE", utcnow())
        outcome: ledger.ReserveOutcome = await self._budgets.writer.submit(ledger.reserve_op, item)
        if outcome.over is None:
            return reservation
        entity, dimension = outcome.over
        self._audit.record(
            AuditEntry(
                "budget.over_limit",
                grant.actor,
                grant.tenant_id,
                mode,
                request={
                    "job_id": grant.job_id,
                    "llm_call": call_id,
                    "estimate": estimate.as_dict(),
                    "entities": list(entities),
                },
                response={"entity": entity, "dimension": dimension, "enforced": not outcome.admitted},
                cost_usd=estimate.cost_usd,
            )
        )
        if outcome.admitted:
            return reservation
        self._metrics.budget_refusals.inc()
        detail = ""
        if outcome.state is not None:
            state = outcome.state
            committed = state.used.get(dimension) + state.reserved.get(dimension)
            detail = f": {committed:g} of {state.effective_limit(dimension):g} used or reserved"
        message = (
            f"budget {entity!r} of tenant {grant.tenant_id!r} has no room for this call's {dimension}{detail}, "
            f"the call needs up to {estimate.get(dimension):g}"
        )
        raise BudgetRefused(message, entity, dimension)

    async def settle(self, reservation: CallReservation | None, used: Amounts, call_row: dict[str, Any]) -> None:
        """Write the call's row and settle its usage (releasing its reservation) in one batched
        transaction; with limits, fold it in now. A refused call (no reservation) is only recorded."""
        settlement = None
        if reservation is not None:
            settlement = ledger.Settlement(reservation.tenant_id, reservation.ledger_id, reservation.entities, used)
        await self._budgets.writer.submit(_close_op, (settlement, call_row))
        if reservation is not None and reservation.limited:
            await self._budgets.fold()


async def _close_op(
    conn: AsyncConnection, items: Sequence[tuple[ledger.Settlement | None, dict[str, Any]]]
) -> list[None]:
    await insert_calls(conn, [row for _, row in items])
    settlements = [s for s, _ in items if s is not None]
    if settlements:
        await ledger.settle(conn, settlements, utcnow())
    return [None] * len(items)

"""How budgets read: usage reports with projections (FR-BUD-6), alert events (FR-BUD-4), entities."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent_fabric import names
from agent_fabric.admission.budget_math import (
    DIMENSIONS,
    HARD_THRESHOLD,
    Amounts,
    BudgetState,
    ClosedPeriod,
    projection,
    usage_ratio,
)
from agent_fabric.events.envelope import fabric_event
from agent_fabric.storage.outbox import OutboxMessage

TENANT_ENTITY = "tenant"
ENTITY_KINDS = ("tenant", "agent", "user")


def task_entities(tenant_id: str, agent: str, user: str | None) -> tuple[str, ...]:
    """The budgets a task counts against: its tenant, its agent, and its user when it names one."""
    del tenant_id  # entities live inside a tenant; the tenant itself is "tenant"
    entities = [TENANT_ENTITY, f"agent:{agent}"[:200]]
    if user:
        entities.append(f"user:{user}"[:200])
    return tuple(entities)


def parse_entity(text: str) -> str:
    """'tenant', 'agent:<id>', 'user:<id>' or 'task:<job_id>' (a task's own LLM limits, set from its
    metadata by the LLM gateway); ValueError otherwise."""
    if text == TENANT_ENTITY:
        return text
    kind, sep, ident = text.partition(":")
    if not sep or kind not in ("agent", "user", "task") or not ident or len(text) > 200:
        raise ValueError(
            "a budget entity is 'tenant', 'agent:<id>', 'user:<id>' or 'task:<job_id>' (at most 200 characters); "
            f"got {text!r}"
        )
    return text


def metric_entity(tenant_id: str, entity: str) -> str:
    return f"{tenant_id}/{entity}"


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _effective(state: BudgetState) -> dict[str, float | None]:
    return {d: state.effective_limit(d) for d in DIMENSIONS}


def current_report(tenant_id: str, entity: str, state: BudgetState, mode: str, now: datetime) -> dict[str, Any]:
    projected = projection(state, now)
    effective = _effective(state)
    remaining = {
        d: None if limit is None else max(0.0, limit - state.used.get(d) - state.reserved.get(d))
        for d, limit in effective.items()
    }
    projected_state = BudgetState(
        state.limits, state.period, state.carryover, state.alert_threshold_percent, state.period_start, projected
    )
    return {
        "tenant_id": tenant_id,
        "entity": entity,
        "mode": mode,
        "enforced": mode == "LIVE" and state.limits.any,
        "period": state.period,
        "period_start": _iso(state.period_start),
        "period_end": _iso(state.period_end),
        "carryover": state.carryover,
        "alert_threshold_percent": state.alert_threshold_percent,
        "limits": state.limits.as_dict(),
        "carried": state.carried.as_dict(),
        "effective_limits": effective,
        "used": state.used.as_dict(),
        "reserved": state.reserved.as_dict(),
        "remaining": remaining,
        "usage_ratio": round(usage_ratio(state), 6),
        "projected": projected.as_dict(),
        "projected_ratio": round(usage_ratio(projected_state), 6),
        "alerts_sent": list(state.alerts_sent),
    }


def closed_report(tenant_id: str, entity: str, closed: ClosedPeriod) -> dict[str, Any]:
    state = BudgetState(closed.limits, "daily", False, 100.0, closed.start, closed.used, Amounts(), closed.carried)
    return {
        "tenant_id": tenant_id,
        "entity": entity,
        "period_start": _iso(closed.start),
        "period_end": _iso(closed.end),
        "closed": True,
        "limits": closed.limits.as_dict(),
        "carried": closed.carried.as_dict(),
        "used": closed.used.as_dict(),
        "usage_ratio": round(usage_ratio(state), 6),
    }


def alert_message(tenant_id: str, entity: str, state: BudgetState, threshold: float, mode: str) -> OutboxMessage:
    """One alert per budget, period and threshold: the event id says which, so it is sent once."""
    data = {
        "tenant_id": tenant_id,
        "entity": entity,
        "threshold_percent": threshold,
        "level": "exceeded" if threshold >= HARD_THRESHOLD else "warning",
        "usage_ratio": round(usage_ratio(state), 6),
        "used": state.used.as_dict(),
        "effective_limits": _effective(state),
        "period": state.period,
        "period_start": _iso(state.period_start),
        "period_end": _iso(state.period_end),
        "mode": mode,
    }
    event_id = f"budget/{tenant_id}/{entity}/{_iso(state.period_start)}/{threshold:g}"
    body = fabric_event(names.BUDGET_ALERT_EVENT_TYPE, data, subject=f"{tenant_id}/{entity}", event_id=event_id)
    return OutboxMessage(names.BUDGET_ALERT_SUBJECT, event_id, body)

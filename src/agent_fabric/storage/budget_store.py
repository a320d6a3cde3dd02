"""Budget rows in SQL: state <-> row, locking, writing back, reads.

Atomic across replicas: every operation that changes budget counters first locks the rows it
touches with SELECT ... FOR UPDATE, in (tenant, entity) order so replicas never deadlock, decides
in Python (admission/budget_math.py), and writes back in the same transaction. Two processes
reserving against one budget therefore serialise on its row and never both take the last unit.
(SQLite has a single writer; these operations run on its one write batcher.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, String, bindparam, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.admission.budget_math import (
    Amounts,
    BudgetState,
    ClosedPeriod,
    Limits,
    Period,
    period_start,
    roll,
)
from agent_fabric.storage.tables import budget_periods, budgets
from agent_fabric.storage.timestamps import aware

Key = tuple[str, str]  # (tenant_id, entity)
TRACKING_PERIOD: Period = "monthly"


def state_from_row(m: Any) -> BudgetState:
    return BudgetState(
        limits=Limits.from_dict(m["limits"]),
        period=m["period"],
        carryover=bool(m["carryover"]),
        alert_threshold_percent=float(m["alert_threshold_percent"]),
        period_start=aware(m["period_start"]),
        used=Amounts.from_dict(m["used"]),
        reserved=Amounts.from_dict(m["reserved"]),
        carried=Amounts.from_dict(m["carried"]),
        alerts_sent=tuple(float(t) for t in m["alerts_sent"]),
    )


def row_from_state(state: BudgetState, now: datetime) -> dict[str, Any]:
    return {
        "limits": state.limits.as_dict(),
        "period": state.period,
        "carryover": state.carryover,
        "alert_threshold_percent": state.alert_threshold_percent,
        "period_start": state.period_start,
        "used": state.used.as_dict(),
        "reserved": state.reserved.as_dict(),
        "carried": state.carried.as_dict(),
        "alerts_sent": list(state.alerts_sent),
        "updated_at": now,
    }


def tracking_state(now: datetime) -> BudgetState:
    """A row that only counts usage: no limits."""
    return BudgetState(Limits(), TRACKING_PERIOD, False, 80.0, period_start(now, TRACKING_PERIOD))


@dataclass
class Locked:
    """Budget rows locked in one transaction, rolled into the current period."""

    states: dict[Key, BudgetState]
    existing: set[Key]
    closed: list[tuple[Key, ClosedPeriod]]

    def rolled(self, key: Key, now: datetime) -> BudgetState:
        state, closed = roll(self.states[key], now)
        if closed is not None:
            self.closed.append((key, closed))
        self.states[key] = state
        return state


# Postgres: fixed statements over unnest()ed arrays, prepared once whatever the batch (an IN list
# is a new statement, and a new server-side prepare, for every size).
_PG_LOCK = (
    text("""
SELECT b.* FROM budgets AS b
JOIN unnest(:tenants, :entities) AS k(tenant_id, entity) ON b.tenant_id = k.tenant_id AND b.entity = k.entity
ORDER BY b.tenant_id, b.entity FOR UPDATE OF b
""")
    .bindparams(bindparam("tenants", type_=ARRAY(String)), bindparam("entities", type_=ARRAY(String)))
    .columns(*budgets.c)
)


async def lock_budgets(conn: AsyncConnection, keys: set[Key], now: datetime) -> Locked:
    locked = Locked({}, set(), [])
    if keys:
        ordered = sorted(keys)
        if conn.dialect.name == "postgresql":
            rows = await conn.execute(
                _PG_LOCK, {"tenants": [t for t, _ in ordered], "entities": [e for _, e in ordered]}
            )
        else:
            rows = await conn.execute(
                select(budgets)
                .where(tuple_(budgets.c.tenant_id, budgets.c.entity).in_(ordered))
                .order_by(budgets.c.tenant_id, budgets.c.entity)
            )
        for row in rows:
            key = (row.tenant_id, row.entity)
            locked.states[key] = state_from_row(row._mapping)
            locked.existing.add(key)
            locked.rolled(key, now)
    return locked


async def write_budgets(conn: AsyncConnection, locked: Locked, keys: set[Key], now: datetime) -> None:
    """Write back the rows in `keys` (update those that existed, insert the new) and close periods."""
    updates = [{"k_tenant": t, "k_entity": e, **row_from_state(locked.states[(t, e)], now)} for t, e in sorted(keys)]
    changed = [u for u in updates if (u["k_tenant"], u["k_entity"]) in locked.existing]
    new = [u for u in updates if (u["k_tenant"], u["k_entity"]) not in locked.existing]
    if changed:
        await conn.execute(_UPDATE_BUDGET, changed)
    if new:
        await conn.execute(
            insert(budgets),
            [{"tenant_id": u.pop("k_tenant"), "entity": u.pop("k_entity"), **u} for u in new],
        )
    if locked.closed:
        values = [
            {
                "tenant_id": t,
                "entity": e,
                "period_start": c.start,
                "period_end": c.end,
                "limits": c.limits.as_dict(),
                "used": c.used.as_dict(),
                "carried": c.carried.as_dict(),
            }
            for (t, e), c in locked.closed
        ]
        insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        await conn.execute(insert_(budget_periods).on_conflict_do_nothing(), values)
        locked.closed = []


_STATE_COLUMNS = (
    "limits",
    "period",
    "carryover",
    "alert_threshold_percent",
    "period_start",
    "used",
    "reserved",
    "carried",
    "alerts_sent",
    "updated_at",
)
_UPDATE_BUDGET = (
    update(budgets)
    .where(budgets.c.tenant_id == bindparam("k_tenant"), budgets.c.entity == bindparam("k_entity"))
    .values({c: bindparam(c) for c in _STATE_COLUMNS})
)


# -- reads (no locks: reports and the in-memory set of limited budgets) --


async def stored_state(engine: AsyncEngine, tenant_id: str, entity: str) -> BudgetState | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(budgets).where(budgets.c.tenant_id == tenant_id, budgets.c.entity == entity))
        ).first()
    return state_from_row(row._mapping) if row else None


async def closed_period(engine: AsyncEngine, tenant_id: str, entity: str, start: datetime) -> ClosedPeriod | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(budget_periods).where(
                    budget_periods.c.tenant_id == tenant_id,
                    budget_periods.c.entity == entity,
                    budget_periods.c.period_start == start,
                )
            )
        ).first()
    if row is None:
        return None
    m = row._mapping
    return ClosedPeriod(
        aware(m["period_start"]),
        aware(m["period_end"]),
        Limits.from_dict(m["limits"]),
        Amounts.from_dict(m["used"]),
        Amounts.from_dict(m["carried"]),
    )


async def budget_rows(
    engine: AsyncEngine, tenant_id: str | None, limit: int, offset: int
) -> list[tuple[Key, BudgetState]]:
    stmt = select(budgets).order_by(budgets.c.tenant_id, budgets.c.entity).limit(limit).offset(offset)
    if tenant_id is not None:
        stmt = stmt.where(budgets.c.tenant_id == tenant_id)
    async with engine.connect() as conn:
        return [((r.tenant_id, r.entity), state_from_row(r._mapping)) for r in await conn.execute(stmt)]


async def limited_budgets(engine: AsyncEngine) -> set[Key]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(budgets.c.tenant_id, budgets.c.entity, budgets.c.limits))
        return {(r.tenant_id, r.entity) for r in rows if any(v is not None for v in r.limits.values())}

"""The usage ledger in SQL: one row per admitted task, from its reservation to its settled usage.

Reservations lock the budget rows they touch (budget_store.lock_budgets) and write the task's
ledger row in the same transaction; the transaction that finishes a task marks its row settled;
a fold moves settled rows into the budgets and deletes them. Each step is idempotent per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ARRAY, String, bindparam, delete, insert, select, text, tuple_, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.admission.budget_math import Amounts, BudgetState, exceeded_dimension
from agent_fabric.storage.budget_store import Key, lock_budgets, write_budgets
from agent_fabric.storage.pg_raw import driver
from agent_fabric.storage.tables import budget_ledger, tasks
from agent_fabric.storage.task_store import TERMINAL_VALUES

RESERVED = "reserved"
SETTLED = "settled"

_PG_SEEN = text(f"""
SELECT k.tenant_id, k.job_id FROM unnest(:tenants, :jobs) AS k(tenant_id, job_id)
WHERE EXISTS (SELECT 1 FROM budget_ledger AS l WHERE l.tenant_id = k.tenant_id AND l.job_id = k.job_id)
   OR EXISTS (SELECT 1 FROM tasks AS t WHERE t.tenant_id = k.tenant_id AND t.job_id = k.job_id
              AND t.status IN ({", ".join(f"'{v}'" for v in TERMINAL_VALUES)}))
""").bindparams(bindparam("tenants", type_=ARRAY(String)), bindparam("jobs", type_=ARRAY(String)))
_PG_DELETE_LEDGER = text("""
DELETE FROM budget_ledger AS l USING unnest(:tenants, :jobs) AS k(tenant_id, job_id)
WHERE l.tenant_id = k.tenant_id AND l.job_id = k.job_id
""").bindparams(bindparam("tenants", type_=ARRAY(String)), bindparam("jobs", type_=ARRAY(String)))


# -- reservations --


@dataclass(frozen=True, slots=True)
class ReserveItem:
    tenant_id: str
    job_id: str
    entities: tuple[str, ...]
    estimate: Amounts
    enforce: bool
    now: datetime


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    admitted: bool
    over: tuple[str, str] | None = None  # (entity, dimension) past its limit
    state: BudgetState | None = None  # of that entity, after the decision
    already: bool = False  # reserved earlier (an HTTP submission, a redelivery) or finished


async def reserve_op(conn: AsyncConnection, items: Sequence[ReserveItem]) -> list[ReserveOutcome]:
    """Reserve each task's estimate on every limited budget of its entities, all or nothing."""
    now = items[0].now
    jobs = sorted({(i.tenant_id, i.job_id) for i in items})
    seen = await _existing_jobs(conn, jobs)
    locked = await lock_budgets(conn, {(i.tenant_id, e) for i in items for e in i.entities}, now)
    touched: set[Key] = set()
    ledger: list[dict[str, Any]] = []
    outcomes: list[ReserveOutcome] = []
    for item in items:
        if (item.tenant_id, item.job_id) in seen:
            outcomes.append(ReserveOutcome(True, already=True))
            continue
        limited = [(item.tenant_id, e) for e in item.entities if (item.tenant_id, e) in locked.states]
        limited = [k for k in limited if locked.states[k].limits.any]
        over = next(
            ((k, d) for k in limited if (d := exceeded_dimension(locked.states[k], item.estimate)) is not None), None
        )
        if over is not None and item.enforce:
            outcomes.append(ReserveOutcome(False, (over[0][1], over[1]), locked.states[over[0]]))
            continue
        for key in limited:
            state = locked.states[key]
            locked.states[key] = replace(state, reserved=state.reserved + item.estimate)
            touched.add(key)
        seen.add((item.tenant_id, item.job_id))
        ledger.append(_ledger_row(item, [k[1] for k in limited]))
        outcomes.append(ReserveOutcome(True, (over[0][1], over[1]) if over else None))
    await write_budgets(conn, locked, touched | {k for k, _ in locked.closed}, now)
    if ledger:
        await conn.execute(insert(budget_ledger), ledger)
    return outcomes


async def _existing_jobs(conn: AsyncConnection, jobs: list[Key]) -> set[Key]:
    """Jobs reserved before (ledger row) or already finished: nothing to reserve for them."""
    if conn.dialect.name == "postgresql":
        rows = await conn.execute(_PG_SEEN, {"tenants": [t for t, _ in jobs], "jobs": [j for _, j in jobs]})
        return {(r[0], r[1]) for r in rows}
    in_ledger = await conn.execute(
        select(budget_ledger.c.tenant_id, budget_ledger.c.job_id).where(
            tuple_(budget_ledger.c.tenant_id, budget_ledger.c.job_id).in_(jobs)
        )
    )
    finished = await conn.execute(
        select(tasks.c.tenant_id, tasks.c.job_id).where(
            tuple_(tasks.c.tenant_id, tasks.c.job_id).in_(jobs), tasks.c.status.in_(TERMINAL_VALUES)
        )
    )
    return {(r[0], r[1]) for r in in_ledger} | {(r[0], r[1]) for r in finished}


def _ledger_row(item: ReserveItem, reserved_entities: list[str]) -> dict[str, Any]:
    return {
        "tenant_id": item.tenant_id,
        "job_id": item.job_id,
        "state": RESERVED,
        "entities": list(item.entities),
        "reserved_entities": reserved_entities,
        "estimate": item.estimate.as_dict(),
        "used": None,
        "created_at": item.now,
        "settled_at": None,
    }


# -- settlement (inside the transaction that finishes the task) --


@dataclass(frozen=True, slots=True)
class Settlement:
    tenant_id: str
    job_id: str
    entities: tuple[str, ...]
    used: Amounts


# Postgres: one fixed statement over arrays for a batch of settlements (one per finished task),
# sent to asyncpg as is (storage/pg_raw.py) and prepared once per connection.
_PG_SETTLE = f"""
INSERT INTO budget_ledger (tenant_id, job_id, state, entities, reserved_entities, estimate, used, created_at,
                           settled_at)
SELECT t, j, '{SETTLED}', e::jsonb, '[]'::jsonb, $5::jsonb, u::jsonb, $6::timestamptz, $6::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS v(t, j, e, u)
ON CONFLICT (tenant_id, job_id) DO UPDATE SET state = excluded.state, used = excluded.used,
                                              settled_at = excluded.settled_at
"""
_NOTHING = orjson.dumps(Amounts().as_dict()).decode()


async def settle(conn: AsyncConnection, items: Sequence[Settlement], now: datetime) -> None:
    """Mark each job's ledger row settled with its usage (creating it when nothing was reserved).
    A job that used nothing and reserved nothing leaves no row."""
    with_usage = [s for s in items if s.used.nonzero()]
    idle = [s for s in items if not s.used.nonzero()]
    if with_usage and conn.dialect.name == "postgresql":
        # One statement may touch a row once: a job settled twice in one batch keeps its last
        # settlement, as the statement-per-row form did.
        with_usage = list({(s.tenant_id, s.job_id): s for s in with_usage}.values())
        await (await driver(conn)).execute(
            _PG_SETTLE,
            [s.tenant_id for s in with_usage],
            [s.job_id for s in with_usage],
            [orjson.dumps(s.entities).decode() for s in with_usage],
            [orjson.dumps(s.used.as_dict()).decode() for s in with_usage],
            _NOTHING,
            now,
        )
    elif with_usage:
        insert_ = sqlite_insert
        stmt = insert_(budget_ledger)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[budget_ledger.c.tenant_id, budget_ledger.c.job_id],
                set_={"state": SETTLED, "used": stmt.excluded.used, "settled_at": stmt.excluded.settled_at},
            ),
            [
                {
                    "tenant_id": s.tenant_id,
                    "job_id": s.job_id,
                    "state": SETTLED,
                    "entities": list(s.entities),
                    "reserved_entities": [],
                    "estimate": Amounts().as_dict(),
                    "used": s.used.as_dict(),
                    "created_at": now,
                    "settled_at": now,
                }
                for s in with_usage
            ],
        )
    if idle:
        await conn.execute(
            update(budget_ledger)
            .where(
                budget_ledger.c.tenant_id == bindparam("k_tenant"),
                budget_ledger.c.job_id == bindparam("k_job"),
                budget_ledger.c.state == RESERVED,
            )
            .values(state=SETTLED, used=Amounts().as_dict(), settled_at=now),
            [{"k_tenant": s.tenant_id, "k_job": s.job_id} for s in idle],
        )


# -- folding settled usage into the budgets --


@dataclass(frozen=True, slots=True)
class Folded:
    states: dict[Key, BudgetState]  # every budget the fold touched, after it
    rows: int
    alerts: int = 0


# Postgres: take up to :limit settled rows (SKIP LOCKED, so replicas split them), delete them, and
# return the sums per budget (usage over `entities`, released estimates over `reserved_entities`)
# plus one row (entity NULL) counting what was taken. Reading every row back cost a JSON decode of
# four columns per task, and the sums in Python; the database sums in the same pass as the delete.
_PG_TAKE_DELTAS = text(f"""
WITH taken AS (
    DELETE FROM budget_ledger AS l
    WHERE (l.tenant_id, l.job_id) IN (
        SELECT tenant_id, job_id FROM budget_ledger WHERE state = '{SETTLED}'
        ORDER BY settled_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING l.tenant_id, l.entities, l.reserved_entities, l.estimate, l.used
), parts AS (
    SELECT t.tenant_id, e.entity,
           coalesce((t.used ->> 'tokens')::float8, 0) AS ut,
           coalesce((t.used ->> 'compute_seconds')::float8, 0) AS uc,
           coalesce((t.used ->> 'cost_usd')::float8, 0) AS ud,
           0::float8 AS rt, 0::float8 AS rc, 0::float8 AS rd
    FROM taken AS t CROSS JOIN jsonb_array_elements_text(t.entities) AS e(entity)
    UNION ALL
    SELECT t.tenant_id, e.entity, 0, 0, 0,
           coalesce((t.estimate ->> 'tokens')::float8, 0),
           coalesce((t.estimate ->> 'compute_seconds')::float8, 0),
           coalesce((t.estimate ->> 'cost_usd')::float8, 0)
    FROM taken AS t CROSS JOIN jsonb_array_elements_text(t.reserved_entities) AS e(entity)
)
SELECT tenant_id, entity, sum(ut), sum(uc), sum(ud), sum(rt), sum(rc), sum(rd), 0::bigint
FROM parts GROUP BY tenant_id, entity
UNION ALL
SELECT NULL, NULL, 0, 0, 0, 0, 0, 0, count(*) FROM taken
""").bindparams(bindparam("limit"))


async def take_deltas(conn: AsyncConnection, limit: int) -> tuple[int, dict[Key, tuple[Amounts, Amounts]]]:
    """Take (and delete) up to `limit` settled rows: how many, and per budget the usage to add and
    the reservation to release (`deltas` of them)."""
    if conn.dialect.name == "postgresql":
        taken, out = 0, {}
        for r in await conn.execute(_PG_TAKE_DELTAS, {"limit": limit}):
            if r[1] is None:
                taken = int(r[8])
            else:
                out[(r[0], r[1])] = (Amounts(r[2], r[3], r[4]), Amounts(r[5], r[6], r[7]))
        return taken, out
    rows = await take_settled(conn, limit)
    if rows:
        await delete_ledger(conn, rows)
    return len(rows), deltas(rows)


async def take_settled(conn: AsyncConnection, limit: int) -> list[Any]:
    return list(
        await conn.execute(
            select(budget_ledger)
            .where(budget_ledger.c.state == SETTLED)
            .order_by(budget_ledger.c.settled_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


async def delete_ledger(conn: AsyncConnection, rows: Sequence[Any]) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            _PG_DELETE_LEDGER, {"tenants": [r.tenant_id for r in rows], "jobs": [r.job_id for r in rows]}
        )
        return
    await conn.execute(
        delete(budget_ledger).where(
            tuple_(budget_ledger.c.tenant_id, budget_ledger.c.job_id).in_([(r.tenant_id, r.job_id) for r in rows])
        )
    )


def deltas(rows: Sequence[Any]) -> dict[Key, tuple[Amounts, Amounts]]:
    """Per budget: (usage to add, reservation to release)."""
    out: dict[Key, tuple[Amounts, Amounts]] = {}
    for r in rows:
        used = Amounts.from_dict(r.used)
        estimate = Amounts.from_dict(r.estimate)
        for entity in r.entities:
            add, release = out.get((r.tenant_id, entity), (Amounts(), Amounts()))
            out[(r.tenant_id, entity)] = (add + used, release)
        for entity in r.reserved_entities:
            add, release = out.get((r.tenant_id, entity), (Amounts(), Amounts()))
            out[(r.tenant_id, entity)] = (add, release + estimate)
    return out

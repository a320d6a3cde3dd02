"""Decision rows: one per high-impact action put to approvers, and the conditional UPDATEs that
move each along its lifecycle exactly once (proposed -> approved | rejected | expired; approved ->
executed | failed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.pg_raw import driver
from agent_fabric.storage.tables import decisions
from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.storage.timestamps import aware_or_none
from agent_fabric.tasks import TaskStatus

PROPOSED = "proposed"
APPROVED = "approved"
REJECTED = "rejected"
EXPIRED = "expired"
EXECUTED = "executed"
FAILED = "failed"
DecisionStatus = Literal["proposed", "approved", "rejected", "expired", "executed", "failed"]
STATUSES: tuple[str, ...] = get_args(DecisionStatus)
# A task that ends while its decision is still open (approved, or proposed when the NATS door
# refused the waiting task) settles the decision with the task's outcome.
OPEN = (PROPOSED, APPROVED)
TASK_KIND_PREFIX = "task:"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    id: str
    tenant_id: str
    kind: str
    subject: str | None
    approval_id: str | None
    status: str
    proposed_by: str
    detail: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    overridden_by: str | None
    override_notes: str | None
    overridden_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> DecisionRecord:
        m = dict(row._mapping)
        for key in ("created_at", "updated_at", "overridden_at"):
            m[key] = aware_or_none(m[key])
        return cls(**m)


async def insert_decision(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(decisions).values(**values))


async def settle_approval(conn: AsyncConnection, approval_id: str, status: str, now: datetime) -> DecisionRecord | None:
    """The proposed decision behind `approval_id` -> `status` (its approval was decided)."""
    res = await conn.execute(
        update(decisions)
        .where(decisions.c.approval_id == approval_id, decisions.c.status == PROPOSED)
        .values(status=status, updated_at=now)
        .returning(*decisions.c)
    )
    row = res.first()
    return DecisionRecord.from_row(row) if row else None


async def stamp_override(conn: AsyncConnection, decision_id: str, by: str, notes: str, now: datetime) -> None:
    await conn.execute(
        update(decisions)
        .where(decisions.c.id == decision_id)
        .values(overridden_by=by, override_notes=notes, overridden_at=now, updated_at=now)
    )


async def settle_tasks(conn: AsyncConnection, finished: Sequence[TaskRecord], now: datetime) -> int:
    """Open task decisions of these finished tasks -> executed (completed) or failed, with the
    outcome in `detail`. Called for every batch of finished tasks, so the common case (no task of
    the batch had a decision) is one indexed SELECT that finds nothing."""
    by_key = {(t.tenant_id, t.job_id): t for t in finished}
    tenants, jobs = list({t for t, _ in by_key}), list({j for _, j in by_key})
    rows: Sequence[Any]
    if conn.dialect.name == "postgresql":
        rows = await (await driver(conn)).fetch(_PG_OPEN_TASK_DECISIONS, tenants, jobs)
    else:
        result = await conn.execute(
            select(decisions.c.id, decisions.c.tenant_id, decisions.c.subject, decisions.c.detail).where(
                decisions.c.tenant_id.in_(tenants),
                decisions.c.subject.in_(jobs),
                decisions.c.kind.startswith(TASK_KIND_PREFIX),
                decisions.c.status.in_(OPEN),
            )
        )
        rows = [r._mapping for r in result]
    settled = 0
    for row in rows:  # asyncpg records or row mappings: by column name
        task = by_key.get((row["tenant_id"], row["subject"]))
        if task is None:  # the IN lists cross tenants and jobs: another tenant's job of that name
            continue
        outcome = {
            "status": task.status.value,
            "error": {"code": task.error_code, "message": task.error_message} if task.error_code else None,
            "finished_at": (task.finished_at or now).isoformat(),
        }
        await conn.execute(
            update(decisions)
            .where(decisions.c.id == row["id"], decisions.c.status.in_(OPEN))
            .values(
                status=EXECUTED if task.status == TaskStatus.COMPLETED else FAILED,
                detail={**(row["detail"] or {}), "outcome": outcome},
                updated_at=now,
            )
        )
        settled += 1
    return settled


# Postgres: the same SELECT as one fixed statement over arrays, prepared once (an IN list has a new
# text, and a new server-side prepare, for every batch size).
_PG_OPEN_TASK_DECISIONS = f"""
SELECT id, tenant_id, subject, detail FROM decisions
WHERE tenant_id = ANY($1::text[]) AND subject = ANY($2::text[]) AND kind LIKE '{TASK_KIND_PREFIX}%'
  AND status IN ({", ".join(f"'{s}'" for s in OPEN)})
"""


class DecisionReader:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, decision_id: str) -> DecisionRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(decisions).where(decisions.c.id == decision_id))).first()
        return DecisionRecord.from_row(row) if row else None

    async def for_task(self, tenant_id: str, job_id: str) -> DecisionRecord | None:
        stmt = (
            select(decisions)
            .where(
                decisions.c.tenant_id == tenant_id,
                decisions.c.subject == job_id,
                decisions.c.kind.startswith(TASK_KIND_PREFIX),
            )
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return DecisionRecord.from_row(row) if row else None

    async def list(
        self, *, tenant_id: str, status: str | None, kind: str | None, limit: int, offset: int
    ) -> list[DecisionRecord]:
        stmt = (
            select(decisions)
            .where(decisions.c.tenant_id == tenant_id)
            .order_by(decisions.c.created_at.desc(), decisions.c.id)
            .limit(limit)
            .offset(offset)
        )
        if status is not None:
            stmt = stmt.where(decisions.c.status == status)
        if kind is not None:
            stmt = stmt.where(decisions.c.kind == kind)
        async with self._engine.connect() as conn:
            return [DecisionRecord.from_row(r) for r in await conn.execute(stmt)]

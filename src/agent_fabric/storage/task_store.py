"""Task state in the database: claims with leases, outcomes, events, checkpoints.

Every write goes through the WriteBatcher (group commit). Ownership is fenced: a claim takes a
task only if it is new, queued, or its lease lapsed, and an outcome is written only by the
claim that holds it, so a process that stalled past its lease cannot overwrite a takeover.

This module is the facade: the statements live beside it, one concern each (task_rows: records
and event-log helpers; task_claims; task_outcomes; task_rejections).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.critical_line import CriticalLine
from agent_fabric.storage.tables import checkpoints, task_events, tasks
from agent_fabric.storage.task_claims import _claim_op, claim_on_line
from agent_fabric.storage.task_outcomes import (
    _checkpoint_op,
    _events_op,
    _finish_op,
    _mark_published_op,
)
from agent_fabric.storage.task_rejections import WAITING_VALUES, _reject_op
from agent_fabric.storage.task_rows import (
    TERMINAL_VALUES,
    Claim,
    ClaimResult,
    EventRow,
    Outcome,
    Rejection,
    TaskRecord,
    _event_dict,
    _insert_events,
    _insert_for,
    _new_row,
    _select_rows,
    next_event_n,
    spec_hash,
    utcnow,
)
from agent_fabric.storage.task_search import TaskSearch
from agent_fabric.storage.task_settle import SettledRun, settle_op
from agent_fabric.tasks import Priority, TaskStatus

__all__ = [
    "TERMINAL_VALUES",
    "WAITING_VALUES",
    "Claim",
    "ClaimResult",
    "EventRow",
    "FinishHook",
    "Outcome",
    "Rejection",
    "SettledRun",
    "TaskRecord",
    "TaskStore",
    "_event_dict",
    "_insert_events",
    "_insert_for",
    "_new_row",
    "_select_rows",
    "next_event_n",
    "spec_hash",
    "utcnow",
]

log = logging.getLogger(__name__)

# Runs inside the transaction that makes tasks terminal (outcome or rejection), with those tasks:
# budgets settle usage there, so it is counted exactly once.
FinishHook = Callable[[AsyncConnection, Sequence[TaskRecord]], Awaitable[None]]


class TaskStore:
    """`urgent`: the writer for claims and outcomes of critical tasks (the shared one on SQLite). A
    claim in the shared writer waits behind every batch of outcomes, events and checkpoints in
    flight, tens of milliseconds at saturation; its own writer lets a critical task's writes go
    straight to the database. `line` (Postgres): critical claims go on it first, one round trip
    from the claiming coroutine (storage/critical_line.py); the urgent writer when it fails."""

    def __init__(
        self,
        engine: AsyncEngine,
        batcher: WriteBatcher,
        finish_hooks: Sequence[FinishHook] = (),
        *,
        urgent: WriteBatcher,
        line: CriticalLine | None = None,
    ) -> None:
        self._engine = engine
        self._batcher = batcher
        self._urgent = urgent
        self._line = line
        self.finish_hooks: list[FinishHook] = list(finish_hooks)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def _finish_with_hooks(self, conn: AsyncConnection, items: Sequence[Outcome]) -> list[TaskRecord | None]:
        won = await _finish_op(conn, items)
        finished = [r for r in won if r is not None]
        if finished:
            for hook in self.finish_hooks:
                await hook(conn, finished)
        return won

    async def _settle_with_hooks(self, conn: AsyncConnection, items: Sequence[SettledRun]) -> list[TaskRecord | None]:
        won = await settle_op(conn, items)
        finished = [r for r in won if r is not None]
        if finished:
            for hook in self.finish_hooks:
                await hook(conn, finished)
        return won

    async def _reject_with_hooks(self, conn: AsyncConnection, items: Sequence[Rejection]) -> list[bool]:
        changed = await _reject_op(conn, items)
        keys = [(r.tenant_id, r.job_id) for r, c in zip(items, changed, strict=True) if c]
        if keys and self.finish_hooks:
            records = list((await _select_rows(conn, keys)).values())
            for hook in self.finish_hooks:
                await hook(conn, records)
        return changed

    # -- writes (batched) --
    async def claim(self, claim: Claim) -> ClaimResult:
        critical = claim.spec.priority is Priority.CRITICAL
        if critical and self._line is not None:
            try:
                return await claim_on_line(self._line, self._engine, claim)
            except Exception as exc:  # the database away or a connection cut: the writer retries it
                log.warning(
                    "critical claim on its own line failed; through the writer", extra={"error": str(exc)[:300]}
                )
        writer = self._urgent if critical else self._batcher
        result: ClaimResult = await writer.submit(_claim_op, claim)
        return result

    async def finish(self, outcome: Outcome, *, urgent: bool = False) -> TaskRecord | None:
        """Write the outcome if this claim still holds the task; the finished record, or None if
        another attempt took the task over. `urgent` (a critical task): through the claims' own
        writer, so the task gives its worker slot back without waiting behind a flood's batches
        (with every reserved slot held by critical tasks finishing slowly, the next critical task
        waited for an ordinary slot: 100-350 ms in a traced run)."""
        writer = self._urgent if urgent else self._batcher
        record: TaskRecord | None = await writer.submit(self._finish_with_hooks, outcome)
        return record

    async def settle_at_once(self, run: SettledRun) -> TaskRecord | None:
        """Claim and finish a run that is already over, in one write (storage/task_settle.py): the
        finished record, or None if the task was not free to take (then nothing was written)."""
        record: TaskRecord | None = await self._batcher.submit(self._settle_with_hooks, run)
        return record

    async def reject(self, rejection: Rejection) -> bool:
        inserted: bool = await self._batcher.submit(self._reject_with_hooks, rejection)
        return inserted

    async def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Note these tasks' results as published, (tenant, job) each, in one submit."""
        await self._batcher.submit(_mark_published_op, keys)

    async def add_event(self, tenant_id: str, job_id: str, event: EventRow) -> None:
        await self._batcher.submit(_events_op, (tenant_id, job_id, event))

    async def save_checkpoint(self, tenant_id: str, thread_id: str, step: int, attempt: int, state: Any) -> None:
        await self._batcher.submit(
            _checkpoint_op,
            {
                "tenant_id": tenant_id,
                "thread_id": thread_id,
                "step": step,
                "attempt": attempt,
                "state": state,
                "created_at": utcnow(),
            },
        )

    async def delete_queued(self, tenant_id: str, job_id: str) -> None:
        """Undo an HTTP submission whose publish to JetStream failed (nothing will run it)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                tasks.delete().where(
                    tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id, tasks.c.status == TaskStatus.QUEUED.value
                )
            )
            await conn.execute(
                task_events.delete().where(task_events.c.tenant_id == tenant_id, task_events.c.job_id == job_id)
            )

    async def renew_leases(
        self, owner: str, until: datetime, jobs: Collection[tuple[str, str]] | None = None
    ) -> list[tuple[str, str, str]]:
        """Extend the leases of the tasks `owner` runs (only `jobs`, (tenant_id, job_id) pairs, when
        given). Returns (tenant_id, job_id, message) of those marked for cancellation, so a cancel
        broadcast this process missed still reaches it."""
        running = update(tasks).where(tasks.c.owner == owner, tasks.c.status == TaskStatus.RUNNING.value)
        if jobs is not None:
            running = running.where(tuple_(tasks.c.tenant_id, tasks.c.job_id).in_(list(jobs)))
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                running.values(lease_until=until).returning(
                    tasks.c.tenant_id, tasks.c.job_id, tasks.c.cancel_requested_at, tasks.c.error_message
                )
            )
            return [
                (r.tenant_id, r.job_id, r.error_message or "cancelled")
                for r in rows
                if r.cancel_requested_at is not None
            ]

    async def release(self, tenant_id: str, job_id: str, owner: str) -> None:
        """Hand a running task back (shutdown): the next delivery may claim it at once."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(tasks)
                .where(
                    tasks.c.tenant_id == tenant_id,
                    tasks.c.job_id == job_id,
                    tasks.c.owner == owner,
                    tasks.c.status == TaskStatus.RUNNING.value,
                )
                .values(lease_until=None, owner=None)
            )

    # -- reads --
    async def get(self, tenant_id: str, job_id: str) -> TaskRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(tasks).where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id))
            ).first()
        return TaskRecord.from_row(row) if row else None

    async def find(self, job_id: str) -> list[TaskRecord]:
        """Every tenant's task with this job_id (for admins, who see all tenants)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(tasks).where(tasks.c.job_id == job_id).limit(2))
            return [TaskRecord.from_row(r) for r in rows]

    async def list_tasks(
        self, *, tenant_id: str | None, status: str | None, limit: int, offset: int, search: TaskSearch | None = None
    ) -> list[TaskRecord]:
        stmt = select(tasks).order_by(tasks.c.created_at.desc(), tasks.c.job_id).limit(limit).offset(offset)
        if tenant_id is not None:
            stmt = stmt.where(tasks.c.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(tasks.c.status == status)
        if search is not None:
            stmt = stmt.where(*search.conditions())
        async with self._engine.connect() as conn:
            return [TaskRecord.from_row(r) for r in await conn.execute(stmt)]

    async def events_after(self, tenant_id: str, job_id: str, after: tuple[int, int] | None) -> list[dict[str, Any]]:
        stmt = (
            select(task_events)
            .where(task_events.c.tenant_id == tenant_id, task_events.c.job_id == job_id)
            .order_by(task_events.c.attempt, task_events.c.n)
        )
        if after is not None:
            stmt = stmt.where(tuple_(task_events.c.attempt, task_events.c.n) > tuple_(*after))
        async with self._engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(stmt)]

    async def latest_checkpoint(self, tenant_id: str, thread_id: str) -> tuple[int, Any] | None:
        stmt = (
            select(checkpoints.c.step, checkpoints.c.state)
            .where(checkpoints.c.tenant_id == tenant_id, checkpoints.c.thread_id == thread_id)
            .order_by(checkpoints.c.step.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return (int(row.step), row.state) if row else None

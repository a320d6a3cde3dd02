"""Task transitions before a task runs, in the caller's transaction.

queued (or new) -> awaiting_approval -> queued (approved; the task goes back on the stream)
                                     -> rejected (rejected, or the approval expired)
Each is a conditional UPDATE on the current status, so a transition happens once even when two
replicas race, and each appends to the job's event log (SSE shows the wait).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import (
    EventRow,
    TaskRecord,
    _event_dict,
    _insert_events,
    _insert_for,
    _new_row,
    next_event_n,
)
from agent_fabric.tasks import TaskSpec, TaskStatus

PARKABLE = (TaskStatus.QUEUED.value, TaskStatus.AWAITING_APPROVAL.value)


async def current_task(conn: AsyncConnection, tenant_id: str, job_id: str) -> TaskRecord | None:
    row = (await conn.execute(select(tasks).where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id))).first()
    return TaskRecord.from_row(row) if row else None


async def park(
    conn: AsyncConnection, spec: TaskSpec, hash_: str, event_id: str, approval_id: str, now: datetime
) -> bool:
    """Record the task as awaiting approval: a new row, or a queued one. False if the task is
    already past that (running or finished), when the approval is moot."""
    data = {"approval_id": approval_id}
    insert = (
        _insert_for(conn)(tasks)
        .values(_new_row(spec, hash_, event_id, now, status=TaskStatus.AWAITING_APPROVAL.value))
        .on_conflict_do_nothing()
        .returning(tasks.c.job_id)
    )
    if (await conn.execute(insert)).first() is None:
        moved = await conn.execute(
            update(tasks)
            .where(tasks.c.tenant_id == spec.tenant_id, tasks.c.job_id == spec.job_id, tasks.c.status.in_(PARKABLE))
            .values(status=TaskStatus.AWAITING_APPROVAL.value, updated_at=now)
            .returning(tasks.c.job_id)
        )
        if moved.first() is None:
            return False
    await log_transition(conn, spec.tenant_id, spec.job_id, TaskStatus.AWAITING_APPROVAL, data, now)
    return True


async def release_for_run(conn: AsyncConnection, tenant_id: str, job_id: str, now: datetime) -> bool:
    """Approved: back to queued, so the next delivery may claim it."""
    moved = await conn.execute(
        update(tasks)
        .where(
            tasks.c.tenant_id == tenant_id,
            tasks.c.job_id == job_id,
            tasks.c.status == TaskStatus.AWAITING_APPROVAL.value,
        )
        .values(status=TaskStatus.QUEUED.value, updated_at=now)
        .returning(tasks.c.job_id)
    )
    if moved.first() is None:
        return False
    await log_transition(conn, tenant_id, job_id, TaskStatus.QUEUED, {"approved": True}, now)
    return True


async def end_unstarted(
    conn: AsyncConnection,
    tenant_id: str,
    job_id: str,
    *,
    from_statuses: Sequence[str],
    status: TaskStatus,
    code: str,
    message: str,
    now: datetime,
    **also: Any,
) -> TaskRecord | None:
    """A task that never ran ends here (approval rejected or expired, a dependency failed, a
    cancellation): conditional on its status still being one of `from_statuses`, with its state and
    end events. Its result counts as published: the caller puts the result event in the outbox in
    this same transaction. `also`: further columns to set."""
    res = await conn.execute(
        update(tasks)
        .where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id, tasks.c.status.in_(from_statuses))
        .values(
            status=status.value,
            error_code=code,
            error_message=message,
            finished_at=now,
            updated_at=now,
            result_published=True,
            **also,
        )
        .returning(*tasks.c)
    )
    row = res.first()
    if row is None:
        return None
    await log_transition(conn, tenant_id, job_id, status, {"code": code, "message": message}, now, end=True)
    return TaskRecord.from_row(row)


async def log_transition(
    conn: AsyncConnection,
    tenant_id: str,
    job_id: str,
    status: TaskStatus,
    data: dict[str, Any] | None,
    now: datetime,
    *,
    end: bool = False,
) -> None:
    n = await next_event_n(conn, tenant_id, job_id, 0)
    rows = [_event_dict(tenant_id, job_id, EventRow(0, n, "state", status.value, data, now))]
    if end:
        rows.append(_event_dict(tenant_id, job_id, EventRow(0, n + 1, "end", status.value, None, now)))
    await _insert_events(conn, rows)

"""Cancellation in the database: end a task that has not started, or mark a running one.

Each write is a conditional UPDATE on the task's current status, so a cancellation happens once
however many replicas race (and however it races the task's own claim or outcome):
- queued / waiting / awaiting_approval -> cancelled at once, its result counted as published
  (the caller puts the result event in the outbox in the same transaction);
- running -> `cancel_requested_at` set; until the task ends, `error_message` holds the message
  it will end with ("cancelled by ..."), so whichever replica concludes it can name the canceller.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.storage.task_transitions import end_unstarted
from agent_fabric.tasks import TaskStatus

NOT_STARTED = (TaskStatus.QUEUED.value, TaskStatus.WAITING.value, TaskStatus.AWAITING_APPROVAL.value)
CANCELLED_CODE = "cancelled"


async def cancel_not_started(
    conn: AsyncConnection, tenant_id: str, job_id: str, message: str, now: datetime
) -> TaskRecord | None:
    """Not started yet -> cancelled, with its state and end events. None if it was past that."""
    return await end_unstarted(
        conn,
        tenant_id,
        job_id,
        from_statuses=NOT_STARTED,
        status=TaskStatus.CANCELLED,
        code=CANCELLED_CODE,
        message=message,
        now=now,
        cancel_requested_at=now,
    )


async def mark_running(conn: AsyncConnection, tenant_id: str, job_id: str, message: str, now: datetime) -> bool:
    """Running and not yet marked -> marked. False if it is not running or already marked."""
    res = await conn.execute(
        update(tasks)
        .where(
            tasks.c.tenant_id == tenant_id,
            tasks.c.job_id == job_id,
            tasks.c.status == TaskStatus.RUNNING.value,
            tasks.c.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now, error_message=message, updated_at=now)
        .returning(tasks.c.job_id)
    )
    return res.first() is not None

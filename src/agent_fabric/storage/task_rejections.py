"""Rejections: an unusable task is recorded as rejected, unless its job_id names a real task."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_rows import (
    EventRow,
    Rejection,
    _event_dict,
    _insert_events,
    _insert_for,
    next_event_n,
)
from agent_fabric.tasks import TaskStatus


async def _reject_op(conn: AsyncConnection, items: Sequence[Rejection]) -> list[bool]:
    """Record an unusable task as rejected, unless its job_id already names a real task. A task
    waiting to start (queued or awaiting approval) that this same event created is rejected too:
    admission decides again at the NATS door, and a policy may have changed since the HTTP door."""
    results = []
    for r in items:
        row = {
            "tenant_id": r.tenant_id,
            "job_id": r.job_id,
            "status": TaskStatus.REJECTED.value,
            "priority": "normal",
            "runtime": "unknown",
            "agent_label": "unknown",
            "spec": r.spec_data,
            "spec_hash": "",
            "event_id": r.event_id,
            "attempts": 0,
            "error_code": r.error_code,
            "error_message": r.error_message,
            "result_published": False,
            "created_at": r.now,
            "finished_at": r.now,
            "updated_at": r.now,
        }
        stmt = _insert_for(conn)(tasks).values(row).on_conflict_do_nothing().returning(tasks.c.job_id)
        changed = (await conn.execute(stmt)).first() is not None
        first_n = 0
        if not changed and r.event_id is not None:
            changed = await _reject_waiting(conn, r)
            first_n = await next_event_n(conn, r.tenant_id, r.job_id, 0)
        if changed:
            await _insert_events(
                conn,
                [
                    _event_dict(
                        r.tenant_id,
                        r.job_id,
                        EventRow(
                            0,
                            first_n,
                            "state",
                            TaskStatus.REJECTED.value,
                            {"code": r.error_code, "message": r.error_message},
                            r.now,
                        ),
                    ),
                    _event_dict(
                        r.tenant_id, r.job_id, EventRow(0, first_n + 1, "end", TaskStatus.REJECTED.value, None, r.now)
                    ),
                ],
            )
        results.append(changed)
    return results


WAITING_VALUES = (TaskStatus.QUEUED.value, TaskStatus.AWAITING_APPROVAL.value)


async def _reject_waiting(conn: AsyncConnection, r: Rejection) -> bool:
    res = await conn.execute(
        update(tasks)
        .where(
            tasks.c.tenant_id == r.tenant_id,
            tasks.c.job_id == r.job_id,
            tasks.c.event_id == r.event_id,
            tasks.c.status.in_(WAITING_VALUES),
        )
        .values(
            status=TaskStatus.REJECTED.value,
            error_code=r.error_code,
            error_message=r.error_message,
            finished_at=r.now,
            updated_at=r.now,
        )
        .returning(tasks.c.job_id)
    )
    return res.first() is not None

"""`depends_on` in the database: the edges, waiting tasks, and the conditional UPDATEs that move them.

Every transition is conditional on the task still being `waiting`, so when two replicas (or a
finish and the sweep) reach the same task, exactly one moves it. Each transition appends to the
job's event log. The `waiting` state event also keeps the task's CloudEvent envelope (id,
source, trace context), so whichever replica releases the task can put the same event back on
the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.admission.dependency_graph import DepState
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.storage.pg_raw import driver
from agent_fabric.storage.tables import task_dependencies, task_events, tasks
from agent_fabric.storage.task_store import (
    TERMINAL_VALUES,
    TaskRecord,
    _insert_for,
    _new_row,
)
from agent_fabric.storage.task_transitions import end_unstarted, log_transition
from agent_fabric.tasks import TaskSpec, TaskStatus

Key = tuple[str, str]
WAITING = TaskStatus.WAITING.value


def postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


async def serialize_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    """Postgres: one dependency admission per tenant at a time, so two tasks arriving together that
    close a cycle between them cannot both miss it. (SQLite has a single writer already.)"""
    if postgres(conn):
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"depends_on/{tenant_id}"})


async def add_edges(conn: AsyncConnection, tenant_id: str, job_id: str, depends_on: Sequence[str]) -> None:
    stmt = _insert_for(conn)(task_dependencies).on_conflict_do_nothing()
    await conn.execute(stmt, [{"tenant_id": tenant_id, "job_id": job_id, "depends_on": d} for d in depends_on])


async def live_edges(conn: AsyncConnection, tenant_id: str, jobs: Sequence[str]) -> list[tuple[str, str]]:
    """Edges out of these tasks while they are unfinished (a finished task is in no cycle)."""
    rows = await conn.execute(
        select(task_dependencies.c.job_id, task_dependencies.c.depends_on)
        .join(
            tasks,
            and_(tasks.c.tenant_id == task_dependencies.c.tenant_id, tasks.c.job_id == task_dependencies.c.job_id),
        )
        .where(
            task_dependencies.c.tenant_id == tenant_id,
            task_dependencies.c.job_id.in_(jobs),
            tasks.c.status.not_in(TERMINAL_VALUES),
        )
    )
    return [(r.job_id, r.depends_on) for r in rows]


async def states(
    conn: AsyncConnection, tenant_id: str, jobs: Sequence[str], *, lock: bool = False
) -> dict[str, DepState]:
    """The dependencies that exist, by job id. `lock` (Postgres): take them FOR SHARE NOWAIT, so
    a finish in flight on one of them raises (retry) instead of being read as not finished."""
    if not jobs:
        return {}
    stmt = select(tasks.c.job_id, tasks.c.status, tasks.c.error_code).where(
        tasks.c.tenant_id == tenant_id, tasks.c.job_id.in_(jobs)
    )
    if lock and postgres(conn):
        stmt = stmt.order_by(tasks.c.job_id).with_for_update(read=True, nowait=True)
    return {r.job_id: DepState(TaskStatus(r.status), r.error_code) for r in await conn.execute(stmt)}


async def states_by_key(conn: AsyncConnection, keys: Sequence[Key]) -> dict[Key, DepState]:
    if not keys:
        return {}
    wanted = set(keys)
    rows = await conn.execute(
        select(tasks.c.tenant_id, tasks.c.job_id, tasks.c.status, tasks.c.error_code).where(
            tasks.c.tenant_id.in_({t for t, _ in wanted}), tasks.c.job_id.in_({j for _, j in wanted})
        )
    )
    return {
        (r.tenant_id, r.job_id): DepState(TaskStatus(r.status), r.error_code)
        for r in rows
        if (r.tenant_id, r.job_id) in wanted
    }


async def gated(conn: AsyncConnection, tenant_id: str, job_id: str) -> bool:
    """Whether the task passed the dependency gate already (the gate stores its edges first)."""
    row = await conn.execute(
        select(task_dependencies.c.job_id)
        .where(task_dependencies.c.tenant_id == tenant_id, task_dependencies.c.job_id == job_id)
        .limit(1)
    )
    return row.first() is not None


async def depends_on(conn: AsyncConnection, tenant_id: str, job_id: str) -> list[str]:
    rows = await conn.execute(
        select(task_dependencies.c.depends_on).where(
            task_dependencies.c.tenant_id == tenant_id, task_dependencies.c.job_id == job_id
        )
    )
    return [r.depends_on for r in rows]


async def dependents(conn: AsyncConnection, finished: Sequence[Key]) -> list[Key]:
    """Tasks that depend on any of these (by the upstream index)."""
    if not finished:
        return []
    wanted = set(finished)
    tenants, jobs = list({t for t, _ in wanted}), list({j for _, j in wanted})
    rows: Any
    if conn.dialect.name == "postgresql":
        rows = await (await driver(conn)).fetch(_PG_DEPENDENTS, tenants, jobs)
    else:
        rows = await conn.execute(
            select(task_dependencies.c.tenant_id, task_dependencies.c.job_id, task_dependencies.c.depends_on).where(
                task_dependencies.c.tenant_id.in_(tenants), task_dependencies.c.depends_on.in_(jobs)
            )
        )
    # (tenant_id, job_id, depends_on) by position: asyncpg records and SQLAlchemy rows alike.
    return sorted({(r[0], r[1]) for r in rows if (r[0], r[2]) in wanted})


# Postgres: asked for every batch of finished tasks, so one fixed statement over arrays, prepared
# once per connection (an IN list has a new text, and a new server-side prepare, for every batch
# size), sent to asyncpg as is (storage/pg_raw.py).
_PG_DEPENDENTS = """
SELECT tenant_id, job_id, depends_on FROM task_dependencies
WHERE tenant_id = ANY($1::text[]) AND depends_on = ANY($2::text[])
"""


async def lock_waiting(conn: AsyncConnection, keys: Sequence[Key]) -> list[TaskRecord]:
    """The tasks among `keys` still waiting, locked (in key order, so finishes never deadlock on them)."""
    if not keys:
        return []
    wanted = set(keys)
    stmt = (
        select(tasks)
        .where(
            tasks.c.tenant_id.in_({t for t, _ in wanted}),
            tasks.c.job_id.in_({j for _, j in wanted}),
            tasks.c.status == WAITING,
        )
        .order_by(tasks.c.tenant_id, tasks.c.job_id)
        .with_for_update()
    )
    return [TaskRecord.from_row(r) for r in await conn.execute(stmt) if (r.tenant_id, r.job_id) in wanted]


async def touch_waiting(conn: AsyncConnection, tenant_id: str, job_id: str) -> TaskRecord | None:
    """Lock one waiting task by writing to it (a row lock on Postgres, the write lock on SQLite, so
    what is read next in this transaction stays true until it commits)."""
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id, tasks.c.status == WAITING)
            .values(updated_at=tasks.c.updated_at)
            .returning(*tasks.c)
        )
    ).first()
    return TaskRecord.from_row(row) if row else None


async def insert_waiting(
    conn: AsyncConnection,
    event: TaskEvent,
    hash_: str,
    now: datetime,
    wait_until: datetime,
    note: dict[str, Any],
) -> bool:
    """Record a new (or just queued) task as waiting; False if its job id is taken otherwise. The
    state event keeps `note` (what it waits for) and the CloudEvent envelope."""
    spec = event.spec
    stmt = (
        _insert_for(conn)(tasks)
        .values(_new_row(spec, hash_, event.id, now, status=WAITING, wait_until=wait_until))
        .on_conflict_do_nothing()
        .returning(tasks.c.job_id)
    )
    if (await conn.execute(stmt)).first() is None:
        # The NATS door records every fetched task as queued before admission: park that row.
        moved = await conn.execute(
            update(tasks)
            .where(
                tasks.c.tenant_id == spec.tenant_id,
                tasks.c.job_id == spec.job_id,
                tasks.c.status == TaskStatus.QUEUED.value,
                tasks.c.spec_hash == hash_,
            )
            .values(status=WAITING, wait_until=wait_until, updated_at=now)
            .returning(tasks.c.job_id)
        )
        if moved.first() is None:
            return False
    envelope = {"id": event.id, "source": event.source, **(event.trace or {})}
    await log_transition(conn, spec.tenant_id, spec.job_id, TaskStatus.WAITING, {**note, "event": envelope}, now)
    return True


async def insert_failed(
    conn: AsyncConnection, spec: TaskSpec, hash_: str, event_id: str, code: str, message: str, now: datetime
) -> TaskRecord | None:
    """Record a new (or just queued) task as failed at once (a dependency had already failed). Its
    result counts as published: the caller puts it in the outbox in this transaction."""
    row = _new_row(
        spec,
        hash_,
        event_id,
        now,
        status=TaskStatus.FAILED.value,
        error_code=code,
        error_message=message,
        finished_at=now,
        result_published=True,
    )
    stmt = _insert_for(conn)(tasks).values(row).on_conflict_do_nothing().returning(*tasks.c)
    inserted = (await conn.execute(stmt)).first()
    if inserted is None:
        # The NATS door's queued row of this task: end it instead.
        return await fail(conn, spec.tenant_id, spec.job_id, code, message, now, from_status=TaskStatus.QUEUED.value)
    await log_transition(
        conn, spec.tenant_id, spec.job_id, TaskStatus.FAILED, {"code": code, "message": message}, now, end=True
    )
    return TaskRecord.from_row(inserted)


async def release(conn: AsyncConnection, tenant_id: str, job_id: str, now: datetime) -> TaskRecord | None:
    """waiting -> queued: every dependency completed."""
    row = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id, tasks.c.status == WAITING)
            .values(status=TaskStatus.QUEUED.value, wait_until=None, updated_at=now)
            .returning(*tasks.c)
        )
    ).first()
    if row is None:
        return None
    await log_transition(conn, tenant_id, job_id, TaskStatus.QUEUED, {"dependencies": "completed"}, now)
    return TaskRecord.from_row(row)


async def fail(
    conn: AsyncConnection,
    tenant_id: str,
    job_id: str,
    code: str,
    message: str,
    now: datetime,
    *,
    from_status: str = WAITING,
) -> TaskRecord | None:
    """waiting -> failed. The caller puts the result in the outbox in this transaction."""
    return await end_unstarted(
        conn,
        tenant_id,
        job_id,
        from_statuses=(from_status,),
        status=TaskStatus.FAILED,
        code=code,
        message=message,
        now=now,
        wait_until=None,
    )


async def set_deadline(conn: AsyncConnection, tenant_id: str, job_id: str, until: datetime | None) -> None:
    await conn.execute(
        update(tasks)
        .where(tasks.c.tenant_id == tenant_id, tasks.c.job_id == job_id, tasks.c.status == WAITING)
        .values(wait_until=until)
    )


async def due(conn: AsyncConnection, now: datetime, limit: int) -> list[Key]:
    """Waiting tasks whose deadline passed (by the status index)."""
    rows = await conn.execute(
        select(tasks.c.tenant_id, tasks.c.job_id)
        .where(tasks.c.status == WAITING, tasks.c.wait_until <= now)
        .order_by(tasks.c.wait_until)
        .limit(limit)
    )
    return [(r.tenant_id, r.job_id) for r in rows]


async def envelope(conn: AsyncConnection, tenant_id: str, job_id: str) -> dict[str, Any] | None:
    """The CloudEvent envelope kept by the task's `waiting` state event."""
    data = (
        await conn.execute(
            select(task_events.c.data)
            .where(
                task_events.c.tenant_id == tenant_id,
                task_events.c.job_id == job_id,
                task_events.c.kind == "state",
                task_events.c.status == WAITING,
            )
            .order_by(task_events.c.attempt.desc(), task_events.c.n.desc())
            .limit(1)
        )
    ).scalar()
    return data.get("event") if isinstance(data, dict) else None

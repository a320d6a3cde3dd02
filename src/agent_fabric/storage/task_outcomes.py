"""Outcomes: an outcome lands only where its claim (owner + attempt) still holds a running task;
then the published mark, progress events and checkpoints (all batched)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, Integer, String, Text, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.pg_raw import driver, json_text
from agent_fabric.storage.tables import Timestamp, checkpoints, tasks
from agent_fabric.storage.task_rows import EventRow, Outcome, TaskRecord, _event_dict, _insert_events
from agent_fabric.tasks import TaskStatus

# Postgres: one fixed statement over unnest()ed arrays, so it is compiled and prepared once
# whatever the batch size (a VALUES list is a new statement for every size).
_PG_FINISH = (
    text("""
UPDATE tasks SET status = v.status, result = v.result::jsonb, error_code = v.code, error_message = v.message,
       usage = v.usage::jsonb, finished_at = v.now, updated_at = v.now, lease_until = NULL
FROM unnest(:tenants, :jobs, :owners, :attempts, :statuses, :results, :codes, :messages, :usages, :nows)
     AS v(tenant_id, job_id, owner, attempt, status, result, code, message, usage, now)
WHERE tasks.tenant_id = v.tenant_id AND tasks.job_id = v.job_id AND tasks.owner = v.owner
  AND tasks.attempts = v.attempt AND tasks.status = 'running'
RETURNING tasks.*
""")
    .bindparams(
        bindparam("tenants", type_=ARRAY(String)),
        bindparam("jobs", type_=ARRAY(String)),
        bindparam("owners", type_=ARRAY(String)),
        bindparam("attempts", type_=ARRAY(Integer)),
        bindparam("statuses", type_=ARRAY(String)),
        bindparam("results", type_=ARRAY(Text)),
        bindparam("codes", type_=ARRAY(String)),
        bindparam("messages", type_=ARRAY(Text)),
        bindparam("usages", type_=ARRAY(Text)),
        bindparam("nows", type_=ARRAY(Timestamp)),
    )
    .columns(*tasks.c)
)

# Postgres: sent to asyncpg as is (storage/pg_raw.py), prepared once per connection.
_PG_MARK_PUBLISHED = """
UPDATE tasks SET result_published = true FROM unnest($1::text[], $2::text[]) AS k(tenant_id, job_id)
WHERE tasks.tenant_id = k.tenant_id AND tasks.job_id = k.job_id
"""


async def _finish_rows(conn: AsyncConnection, outcomes: Sequence[Outcome]) -> Any:
    if conn.dialect.name == "postgresql":
        return await conn.execute(
            _PG_FINISH,
            {
                "tenants": [o.tenant_id for o in outcomes],
                "jobs": [o.job_id for o in outcomes],
                "owners": [o.owner for o in outcomes],
                "attempts": [o.attempt for o in outcomes],
                "statuses": [o.status.value for o in outcomes],
                "results": [json_text(o.result) for o in outcomes],
                "codes": [o.error_code for o in outcomes],
                "messages": [o.error_message for o in outcomes],
                "usages": [json_text(o.usage) for o in outcomes],
                "nows": [o.now for o in outcomes],
            },
        )
    # SQLite (single writer, in process): executemany, then read back which outcomes landed.
    await conn.execute(
        _FINISH_ONE,
        [
            {
                "k_tenant": o.tenant_id,
                "k_job": o.job_id,
                "k_owner": o.owner,
                "k_attempt": o.attempt,
                "v_status": o.status.value,
                "v_result": o.result,
                "v_code": o.error_code,
                "v_message": o.error_message,
                "v_usage": o.usage,
                "v_now": o.now,
            }
            for o in outcomes
        ],
    )
    return await conn.execute(
        select(tasks).where(
            tasks.c.tenant_id.in_({o.tenant_id for o in outcomes}),
            tasks.c.job_id.in_({o.job_id for o in outcomes}),
            tasks.c.finished_at.is_not(None),
        )
    )


_FINISH_ONE = (
    update(tasks)
    .where(
        tasks.c.tenant_id == bindparam("k_tenant"),
        tasks.c.job_id == bindparam("k_job"),
        tasks.c.owner == bindparam("k_owner"),
        tasks.c.attempts == bindparam("k_attempt"),
        tasks.c.status == TaskStatus.RUNNING.value,
    )
    .values(
        status=bindparam("v_status"),
        result=bindparam("v_result"),
        error_code=bindparam("v_code"),
        error_message=bindparam("v_message"),
        usage=bindparam("v_usage"),
        finished_at=bindparam("v_now"),
        updated_at=bindparam("v_now"),
        lease_until=None,
    )
)


async def _finish_op(conn: AsyncConnection, items: Sequence[Outcome]) -> list[TaskRecord | None]:
    # One UPDATE for the whole batch: each outcome lands only where its claim (owner + attempt)
    # still holds a running task, and the rows returned say which did.
    firsts: dict[tuple[str, str], Outcome] = {}
    for o in items:
        firsts.setdefault((o.tenant_id, o.job_id), o)
    rows = {(r.tenant_id, r.job_id): TaskRecord.from_row(r) for r in await _finish_rows(conn, list(firsts.values()))}
    won: list[TaskRecord | None] = []
    event_rows: list[dict[str, Any]] = []
    for o in items:
        record = rows.get((o.tenant_id, o.job_id)) if firsts[(o.tenant_id, o.job_id)] is o else None
        if record is not None and (record.owner, record.attempts, record.status) != (o.owner, o.attempt, o.status):
            record = None  # finished, but by another attempt
        won.append(record)
        if record is not None:
            event_rows.extend(_event_dict(o.tenant_id, o.job_id, ev) for ev in o.events)
    await _insert_events(conn, event_rows)
    return won


async def _mark_published_op(conn: AsyncConnection, items: Sequence[Sequence[tuple[str, str]]]) -> list[None]:
    """Each item: the (tenant, job) keys of one submit (the runner sends a burst of them at once)."""
    keys = [key for batch in items for key in batch]
    if conn.dialect.name == "postgresql":
        await (await driver(conn)).execute(_PG_MARK_PUBLISHED, [t for t, _ in keys], [j for _, j in keys])
    else:
        await conn.execute(_MARK_ONE, [{"k_tenant": t, "k_job": j} for t, j in keys])
    return [None] * len(items)


_MARK_ONE = (
    update(tasks)
    .where(tasks.c.tenant_id == bindparam("k_tenant"), tasks.c.job_id == bindparam("k_job"))
    .values(result_published=True)
)


async def _events_op(conn: AsyncConnection, items: Sequence[tuple[str, str, EventRow]]) -> list[None]:
    await _insert_events(conn, [_event_dict(t, j, ev) for t, j, ev in items])
    return [None] * len(items)


async def _checkpoint_op(conn: AsyncConnection, items: Sequence[dict[str, Any]]) -> list[None]:
    await conn.execute(insert(checkpoints), list(items))
    return [None] * len(items)

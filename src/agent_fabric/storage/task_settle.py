"""Claim and outcome in one write, for a run that is over before its claim would have been written.

A task whose driver settles it at once (a builtin echo, fail, or spend without seconds: no side
effect outside its RunContext, no waiting, nothing durable while it runs) is run first and then
claimed and finished by one statement per batch: the row goes straight to its final status, with
its running, final and end events, in the same transaction as the finish hooks (usage, decisions,
dependents). Its whole durable footprint is one transaction instead of two (claim, then outcome).

The statement takes the task under a claim's conditions (not finished, not waiting for
dependencies, nobody holds a live lease) and two more: it was never claimed before (attempts 0),
and nobody asked to cancel it. Where any of these fails nothing is written, and the runner takes
the ordinary path (claim, run, outcome) as if the early run had not happened: it had no effect
to undo. A crash before the commit leaves nothing behind; after it, the redelivery finds the
finished task and publishes its result if that had not happened (as for any finished task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, String, Text, and_, bindparam, func, or_, text
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.tables import Timestamp, tasks
from agent_fabric.storage.task_rows import (
    TERMINAL_VALUES,
    Claim,
    EventRow,
    TaskRecord,
    _event_dict,
    _insert_events,
    _insert_for,
    _new_row,
    row_arrays,
)
from agent_fabric.storage.timestamps import aware
from agent_fabric.tasks import TaskStatus


@dataclass(frozen=True)
class SettledRun:
    """A run that is already over: its claim (owner, lease, now) and its outcome."""

    claim: Claim
    status: TaskStatus
    result: Any
    error_code: str | None
    error_message: str | None
    usage: dict[str, Any]
    events: tuple[EventRow, ...]  # running, final, end (attempt 1)


async def settle_op(conn: AsyncConnection, items: Sequence[SettledRun]) -> list[TaskRecord | None]:
    """The finished record of each run that took its task, None where the task was not free."""
    # A job repeated within the batch is written once (Postgres refuses one INSERT .. ON CONFLICT
    # touching a row twice); the repeats take the ordinary path and find it finished.
    firsts: dict[tuple[str, str], SettledRun] = {}
    for s in items:
        firsts.setdefault((s.claim.spec.tenant_id, s.claim.spec.job_id), s)
    values = [
        _new_row(
            s.claim.spec,
            s.claim.spec_hash,
            s.claim.event_id,
            s.claim.now,
            status=s.status.value,
            attempts=1,
            owner=s.claim.owner,
            result=s.result,
            error_code=s.error_code,
            error_message=s.error_message,
            usage=s.usage,
            started_at=s.claim.now,
            finished_at=s.claim.now,
        )
        for s in firsts.values()
    ]
    # The record is what was written (attempt 1 by the statement's conditions): only the row's
    # creation time comes back, an existing queued row keeps its own. No spec or result read back.
    won: dict[tuple[str, str], TaskRecord] = {}
    rows = {(row["tenant_id"], row["job_id"]): row for row in values}
    if conn.dialect.name == "postgresql":
        result = await conn.execute(_PG_SETTLE, _pg_arrays(values))
    else:
        result = await conn.execute(_settle_statement(conn), values)
    for r in result:
        if r.tenant_id is not None:  # (a row the statement did not write may come back as all None)
            won[(r.tenant_id, r.job_id)] = _written(rows[(r.tenant_id, r.job_id)], aware(r.created_at))
    await _insert_events(
        conn,
        [_event_dict(t, j, ev) for (t, j) in won for ev in firsts[(t, j)].events],
    )
    return [
        won.get(key) if firsts[key] is s else None
        for s in items
        for key in [(s.claim.spec.tenant_id, s.claim.spec.job_id)]
    ]


_TAKEN_ONLY_FROM = ", ".join(f"'{v}'" for v in (*TERMINAL_VALUES, TaskStatus.WAITING.value))

# Postgres: the same statement over unnest()ed arrays, compiled and prepared once whatever the
# batch size (SQLAlchemy's executemany spent more building parameters than the database did).
_PG_SETTLE = text(f"""
INSERT INTO tasks (tenant_id, job_id, status, priority, runtime, agent_label, spec, spec_hash, event_id,
                   attempts, owner, lease_until, result, error_code, error_message, usage, result_published,
                   created_at, started_at, finished_at, updated_at)
SELECT t, j, st, pr, rt, al, sp::jsonb, sh, ev, 1, ow, NULL, rs::jsonb, ec, em, us::jsonb, false, n, n, n, n
FROM unnest(:tenants, :jobs, :statuses, :priorities, :runtimes, :labels, :specs, :hashes, :events, :owners,
            :results, :codes, :messages, :usages, :nows)
     AS v(t, j, st, pr, rt, al, sp, sh, ev, ow, rs, ec, em, us, n)
ON CONFLICT (tenant_id, job_id) DO UPDATE SET
    status = excluded.status, attempts = tasks.attempts + 1, owner = excluded.owner, lease_until = NULL,
    result = excluded.result, error_code = excluded.error_code, error_message = excluded.error_message,
    usage = excluded.usage, started_at = coalesce(tasks.started_at, excluded.started_at),
    finished_at = excluded.finished_at, updated_at = excluded.updated_at
WHERE tasks.status NOT IN ({_TAKEN_ONLY_FROM})
  AND (tasks.owner IS NULL OR tasks.lease_until < excluded.updated_at)
  AND tasks.attempts = 0 AND tasks.cancel_requested_at IS NULL
RETURNING tasks.tenant_id, tasks.job_id, tasks.created_at
""").bindparams(
    *(
        bindparam(name, type_=ARRAY(String))
        for name in ("tenants", "jobs", "statuses", "priorities", "runtimes", "labels", "specs", "hashes")
    ),
    *(bindparam(name, type_=ARRAY(String)) for name in ("events", "owners", "results", "codes")),
    bindparam("messages", type_=ARRAY(Text)),
    bindparam("usages", type_=ARRAY(Text)),
    bindparam("nows", type_=ARRAY(Timestamp)),
)


_SETTLE_ARRAYS = (
    "tenants", "jobs", "statuses", "priorities", "runtimes", "labels", "specs", "hashes",
    "events", "owners", "results", "codes", "messages", "usages", "nows",
)  # fmt: skip


def _pg_arrays(values: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return row_arrays(values, _SETTLE_ARRAYS)


def _written(row: dict[str, Any], created_at: datetime) -> TaskRecord:
    """The record as the statement wrote it: its first attempt, its result not yet published."""
    return TaskRecord.from_mapping({**row, "attempts": 1, "result_published": False, "created_at": created_at})


_SETTLE_STATEMENTS: dict[str, Any] = {}


def _settle_statement(conn: AsyncConnection) -> Any:
    """One statement shape for every batch (SQLAlchemy folds the executemany into multi-row
    INSERTs without recompiling per batch size), built once per dialect."""
    dialect = conn.dialect.name
    if dialect not in _SETTLE_STATEMENTS:
        ins = _insert_for(conn)(tasks)
        x = ins.excluded
        _SETTLE_STATEMENTS[dialect] = ins.on_conflict_do_update(
            index_elements=[tasks.c.tenant_id, tasks.c.job_id],
            set_={
                "status": x.status,
                "attempts": tasks.c.attempts + 1,
                "owner": x.owner,
                "lease_until": None,
                "result": x.result,
                "error_code": x.error_code,
                "error_message": x.error_message,
                "usage": x.usage,
                "started_at": func.coalesce(tasks.c.started_at, x.started_at),
                "finished_at": x.finished_at,
                "updated_at": x.updated_at,
            },
            # A claim's conditions (see task_claims), and: never claimed, not marked for cancellation.
            where=and_(
                *(tasks.c.status != value for value in (*TERMINAL_VALUES, TaskStatus.WAITING.value)),
                or_(tasks.c.owner.is_(None), tasks.c.lease_until < x.updated_at),
                tasks.c.attempts == 0,
                tasks.c.cancel_requested_at.is_(None),
            ),
        ).returning(tasks.c.tenant_id, tasks.c.job_id, tasks.c.created_at, sort_by_parameter_order=True)
    return _SETTLE_STATEMENTS[dialect]

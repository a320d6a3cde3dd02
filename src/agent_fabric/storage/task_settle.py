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

from sqlalchemy import and_, func, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.pg_raw import driver, json_text
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_rows import (
    TERMINAL_VALUES,
    Claim,
    EventRow,
    TaskRecord,
    _event_dict,
    _insert_events,
    _insert_for,
    _new_row,
    spec_json,
    spec_json_text,
)
from agent_fabric.storage.timestamps import aware
from agent_fabric.tasks import TaskStatus


@dataclass(frozen=True)
class SettledRun:
    """A run that is already over: its claim (owner, lease, now) and its outcome. Its events are
    the running, final and end events of attempt 1, all at the claim's moment (the run was over
    by then), the final one at `final_n`: what the runner publishes live is what is stored."""

    claim: Claim
    status: TaskStatus
    result: Any
    error_code: str | None
    error_message: str | None
    usage: dict[str, Any]
    final_n: int = 1

    @property
    def events(self) -> tuple[EventRow, EventRow, EventRow]:
        now, status = self.claim.now, self.status.value
        data = {"code": self.error_code, "message": self.error_message} if self.error_code else None
        return (
            EventRow(1, 0, "state", TaskStatus.RUNNING.value, {"attempt": 1}, now),
            EventRow(1, self.final_n, "state", status, data, now),
            EventRow(1, self.final_n + 1, "end", status, None, now),
        )


async def settle_op(conn: AsyncConnection, items: Sequence[SettledRun]) -> list[TaskRecord | None]:
    """The finished record of each run that took its task, None where the task was not free."""
    # A job repeated within the batch is written once (Postgres refuses one INSERT .. ON CONFLICT
    # touching a row twice); the repeats take the ordinary path and find it finished.
    firsts: dict[tuple[str, str], SettledRun] = {}
    for s in items:
        firsts.setdefault((s.claim.spec.tenant_id, s.claim.spec.job_id), s)
    if conn.dialect.name == "postgresql":
        won = await _pg_settle(conn, list(firsts.values()))
    else:
        won = await _settle_rows(conn, list(firsts.values()))
    return [
        won.get(key) if firsts[key] is s else None
        for s in items
        for key in [(s.claim.spec.tenant_id, s.claim.spec.job_id)]
    ]


async def _settle_rows(conn: AsyncConnection, runs: list[SettledRun]) -> dict[tuple[str, str], TaskRecord]:
    """SQLite: the statement over rows, then the events of the runs that took their task."""
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
        for s in runs
    ]
    by_key = {(s.claim.spec.tenant_id, s.claim.spec.job_id): s for s in runs}
    won: dict[tuple[str, str], TaskRecord] = {}
    for r in await conn.execute(_settle_statement(conn), values):
        if r.tenant_id is not None:  # (a row the statement did not write may come back as all None)
            won[(r.tenant_id, r.job_id)] = _record(by_key[(r.tenant_id, r.job_id)], aware(r.created_at))
    await _insert_events(conn, [_event_dict(t, j, ev) for (t, j) in won for ev in by_key[(t, j)].events])
    return won


_TAKEN_ONLY_FROM = ", ".join(f"'{v}'" for v in (*TERMINAL_VALUES, TaskStatus.WAITING.value))

# Postgres: the row and its three events in one statement over unnest()ed arrays, sent to asyncpg
# as is (storage/pg_raw.py) and prepared once per connection whatever the batch size. The events
# are made in the database from the row's own status and error (see SettledRun.events), for the
# rows the upsert took: no event arrays travel, and no second statement.
_PG_SETTLE = f"""
WITH v AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                         $15::timestamptz[], $16::int[])
        AS v(t, j, st, pr, rt, al, sp, sh, ev, ow, rs, ec, em, us, at, fn)
), won AS (
    INSERT INTO tasks (tenant_id, job_id, status, priority, runtime, agent_label, spec, spec_hash, event_id,
                       attempts, owner, lease_until, result, error_code, error_message, usage, result_published,
                       created_at, started_at, finished_at, updated_at)
    SELECT t, j, st, pr, rt, al, sp::jsonb, sh, ev, 1, ow, NULL, rs::jsonb, ec, em, us::jsonb, false, at, at, at, at
    FROM v
    ON CONFLICT (tenant_id, job_id) DO UPDATE SET
        status = excluded.status, attempts = tasks.attempts + 1, owner = excluded.owner, lease_until = NULL,
        result = excluded.result, error_code = excluded.error_code, error_message = excluded.error_message,
        usage = excluded.usage, started_at = coalesce(tasks.started_at, excluded.started_at),
        finished_at = excluded.finished_at, updated_at = excluded.updated_at
    WHERE tasks.status NOT IN ({_TAKEN_ONLY_FROM})
      AND (tasks.owner IS NULL OR tasks.lease_until < excluded.updated_at)
      AND tasks.attempts = 0 AND tasks.cancel_requested_at IS NULL
    RETURNING tasks.tenant_id, tasks.job_id, tasks.created_at
), events AS (
    INSERT INTO task_events (tenant_id, job_id, attempt, n, kind, status, data, created_at)
    SELECT won.tenant_id, won.job_id, 1, e.n, e.kind, e.status, e.data, v.at
    FROM won JOIN v ON v.t = won.tenant_id AND v.j = won.job_id
    CROSS JOIN LATERAL (VALUES
        (0, 'state', '{TaskStatus.RUNNING.value}', '{{"attempt": 1}}'::jsonb),
        (v.fn, 'state', v.st,
         CASE WHEN coalesce(v.ec, '') = '' THEN NULL ELSE jsonb_build_object('code', v.ec, 'message', v.em) END),
        (v.fn + 1, 'end', v.st, NULL::jsonb)
    ) AS e(n, kind, status, data)
)
SELECT tenant_id, job_id, created_at FROM won
"""


async def _pg_settle(conn: AsyncConnection, runs: list[SettledRun]) -> dict[tuple[str, str], TaskRecord]:
    specs = [s.claim.spec for s in runs]
    rows = await (await driver(conn)).fetch(
        _PG_SETTLE,
        [spec.tenant_id for spec in specs],
        [spec.job_id for spec in specs],
        [s.status.value for s in runs],
        [spec.priority.value for spec in specs],
        [spec.agent_definition.runtime for spec in specs],
        [spec.agent_definition.label for spec in specs],
        [spec_json_text(spec) for spec in specs],
        [s.claim.spec_hash for s in runs],
        [s.claim.event_id for s in runs],
        [s.claim.owner for s in runs],
        [json_text(s.result) for s in runs],
        [s.error_code for s in runs],
        [s.error_message for s in runs],
        [json_text(s.usage) for s in runs],
        [s.claim.now for s in runs],
        [s.final_n for s in runs],
    )
    by_key = {(spec.tenant_id, spec.job_id): s for spec, s in zip(specs, runs, strict=True)}
    return {(r[0], r[1]): _record(by_key[(r[0], r[1])], aware(r[2])) for r in rows}


def _record(s: SettledRun, created_at: datetime) -> TaskRecord:
    """The record as either statement wrote it: its first attempt, its result not yet published
    (only the row's creation time comes back, as an existing queued row keeps its own; no spec or
    result is read back)."""
    spec, now = s.claim.spec, s.claim.now
    return TaskRecord(
        tenant_id=spec.tenant_id,
        job_id=spec.job_id,
        status=s.status,
        priority=spec.priority.value,
        runtime=spec.agent_definition.runtime,
        agent_label=spec.agent_definition.label,
        spec=spec_json(spec),
        spec_hash=s.claim.spec_hash,
        event_id=s.claim.event_id,
        attempts=1,
        owner=s.claim.owner,
        result=s.result,
        error_code=s.error_code,
        error_message=s.error_message,
        usage=s.usage,
        result_published=False,
        created_at=created_at,
        started_at=now,
        finished_at=now,
        updated_at=now,
    )


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

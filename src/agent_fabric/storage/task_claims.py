"""Claims: a task is taken (status running, attempts + 1, a lease) only if it is new, queued, or
its lease lapsed; one statement per batch, whatever its size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.critical_line import CriticalLine
from agent_fabric.storage.pg_raw import driver
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_rows import (
    TERMINAL_VALUES,
    Claim,
    ClaimResult,
    EventRow,
    _event_dict,
    _insert_events,
    _insert_for,
    _new_row,
    _select_rows,
    spec_json_text,
)
from agent_fabric.tasks import TaskStatus


async def claim_on_line(line: CriticalLine, engine: AsyncEngine, claim: Claim) -> ClaimResult:
    """One critical claim on the critical line (Postgres): the batch statement with one row."""
    for _, _, attempts, cancel_requested_at, error_message in await line.fetch(_PG_CLAIM, *_claim_args([claim])):
        cancelled_by = (error_message or "cancelled") if cancel_requested_at is not None else None
        return ClaimResult(True, int(attempts), None, cancelled_by)
    key = (claim.spec.tenant_id, claim.spec.job_id)
    async with engine.connect() as conn:  # not taken: who holds it (rare: a repeat, a takeover)
        current = (await _select_rows(conn, [key])).get(key)
    return ClaimResult(claimed=False, attempts=current.attempts if current else 0, current=current)


async def _claim_op(conn: AsyncConnection, items: Sequence[Claim]) -> list[ClaimResult]:
    # Postgres refuses one INSERT .. ON CONFLICT touching a row twice: a job repeated within the
    # batch is claimed once and the repeats see the claimed row.
    firsts: dict[tuple[str, str], Claim] = {}
    for c in items:
        firsts.setdefault((c.spec.tenant_id, c.spec.job_id), c)
    postgres = conn.dialect.name == "postgresql"
    # Postgres: the claims and their running events are one statement (a round trip less on a
    # critical task's way to `running`). Elsewhere one statement shape for every batch: executemany
    # with RETURNING is folded by SQLAlchemy into multi-row INSERTs without recompiling per size.
    rows: Any
    if postgres:
        rows = await _pg_claim(conn, list(firsts.values()))
    else:
        values = [
            _new_row(
                c.spec,
                c.spec_hash,
                c.event_id,
                c.now,
                status=TaskStatus.RUNNING.value,
                attempts=1,
                owner=c.owner,
                lease_until=c.lease_until,
                started_at=c.now,
            )
            for c in firsts.values()
        ]
        rows = await conn.execute(_claim_statement(conn), values)
    claimed: dict[tuple[str, str], int] = {}
    cancelled_by: dict[tuple[str, str], str] = {}
    # (tenant_id, job_id, attempts, cancel_requested_at, error_message) by position: asyncpg
    # records and SQLAlchemy rows alike.
    for tenant_id, job_id, attempts, cancel_requested_at, error_message in rows:
        if tenant_id is None:
            continue
        claimed[(tenant_id, job_id)] = int(attempts)
        if cancel_requested_at is not None:  # a running task's mark: error_message holds the message
            cancelled_by[(tenant_id, job_id)] = error_message or "cancelled"
    repeats = [(c.spec.tenant_id, c.spec.job_id) for c in items if firsts[(c.spec.tenant_id, c.spec.job_id)] is not c]
    refused = await _select_rows(conn, [k for k in firsts if k not in claimed] + repeats)
    if not postgres:
        now = items[0].now
        await _insert_events(
            conn,
            [
                _event_dict(
                    t,
                    j,
                    EventRow(
                        attempt=a,
                        n=0,
                        kind="state",
                        status=TaskStatus.RUNNING.value,
                        data={"attempt": a},
                        created_at=now,
                    ),
                )
                for (t, j), a in claimed.items()
            ],
        )
    results = []
    for c in items:
        key = (c.spec.tenant_id, c.spec.job_id)
        if key in claimed and firsts[key] is c:
            results.append(ClaimResult(True, claimed[key], None, cancelled_by.get(key)))
        else:
            current = refused.get(key)
            results.append(ClaimResult(claimed=False, attempts=current.attempts if current else 0, current=current))
    return results


_TAKEN_ONLY_FROM = ", ".join(f"'{v}'" for v in (*TERMINAL_VALUES, TaskStatus.WAITING.value))
_RUNNING = TaskStatus.RUNNING.value

# Postgres: the statement below (a task is taken only if it is not finished, not waiting for its
# dependencies, and nobody holds a live lease) over unnest()ed arrays, prepared once whatever the
# batch size, with each claimed task's `running` event (position 0 of its attempt) written by the
# same statement, sent to asyncpg as is (storage/pg_raw.py).
_PG_CLAIM = f"""
WITH claimed AS (
    INSERT INTO tasks (tenant_id, job_id, status, priority, runtime, agent_label, spec, spec_hash, event_id,
                       attempts, owner, lease_until, result_published, created_at, started_at, updated_at)
    SELECT t, j, '{_RUNNING}', pr, rt, al, sp::jsonb, sh, ev, 1, ow, lu, false, n, n, n
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::timestamptz[], $11::timestamptz[])
         AS v(t, j, pr, rt, al, sp, sh, ev, ow, lu, n)
    ON CONFLICT (tenant_id, job_id) DO UPDATE SET
        status = '{_RUNNING}', attempts = tasks.attempts + 1, owner = excluded.owner,
        lease_until = excluded.lease_until, started_at = coalesce(tasks.started_at, excluded.started_at),
        updated_at = excluded.updated_at
    WHERE tasks.status NOT IN ({_TAKEN_ONLY_FROM})
      AND (tasks.owner IS NULL OR tasks.lease_until < excluded.updated_at)
    RETURNING tasks.tenant_id, tasks.job_id, tasks.attempts, tasks.cancel_requested_at, tasks.error_message,
              tasks.updated_at
), running AS (
    INSERT INTO task_events (tenant_id, job_id, attempt, n, kind, status, data, created_at)
    SELECT tenant_id, job_id, attempts, 0, 'state', '{_RUNNING}', jsonb_build_object('attempt', attempts), updated_at
    FROM claimed
)
SELECT tenant_id, job_id, attempts, cancel_requested_at, error_message FROM claimed
"""


async def _pg_claim(conn: AsyncConnection, claims: list[Claim]) -> Any:
    """The statement above on asyncpg directly (storage/pg_raw.py)."""
    return await (await driver(conn)).fetch(_PG_CLAIM, *_claim_args(claims))


def _claim_args(claims: list[Claim]) -> tuple[list[Any], ...]:
    """The statement's arrays, the spec as its hashed JSON text."""
    specs = [c.spec for c in claims]
    return (
        [spec.tenant_id for spec in specs],
        [spec.job_id for spec in specs],
        [spec.priority.value for spec in specs],
        [spec.agent_definition.runtime for spec in specs],
        [spec.agent_definition.label for spec in specs],
        [spec_json_text(spec) for spec in specs],
        [c.spec_hash for c in claims],
        [c.event_id for c in claims],
        [c.owner for c in claims],
        [c.lease_until for c in claims],
        [c.now for c in claims],
    )


_CLAIM_STATEMENTS: dict[str, Any] = {}


def _claim_statement(conn: AsyncConnection) -> Any:
    dialect = conn.dialect.name
    if dialect not in _CLAIM_STATEMENTS:
        ins = _insert_for(conn)(tasks)
        _CLAIM_STATEMENTS[dialect] = ins.on_conflict_do_update(
            index_elements=[tasks.c.tenant_id, tasks.c.job_id],
            set_={
                "status": TaskStatus.RUNNING.value,
                "attempts": tasks.c.attempts + 1,
                "owner": ins.excluded.owner,
                "lease_until": ins.excluded.lease_until,
                "started_at": func.coalesce(tasks.c.started_at, ins.excluded.started_at),
                "updated_at": ins.excluded.updated_at,
            },
            # Taken only if not finished, not waiting for dependencies (their release puts it back on
            # the stream) and nobody holds a live lease (updated_at is the claim's now).
            # (Spelled as != chains: an IN list expands per call, which executemany cannot take.)
            where=and_(
                *(tasks.c.status != value for value in (*TERMINAL_VALUES, TaskStatus.WAITING.value)),
                or_(tasks.c.owner.is_(None), tasks.c.lease_until < ins.excluded.updated_at),
            ),
        ).returning(
            tasks.c.tenant_id,
            tasks.c.job_id,
            tasks.c.attempts,
            tasks.c.cancel_requested_at,
            tasks.c.error_message,
            sort_by_parameter_order=True,
        )
    return _CLAIM_STATEMENTS[dialect]

"""Claims: a task is taken (status running, attempts + 1, a lease) only if it is new, queued, or
its lease lapsed; one statement per batch, whatever its size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_
from sqlalchemy.ext.asyncio import AsyncConnection

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
)
from agent_fabric.tasks import TaskStatus


async def _claim_op(conn: AsyncConnection, items: Sequence[Claim]) -> list[ClaimResult]:
    # Postgres refuses one INSERT .. ON CONFLICT touching a row twice: a job repeated within the
    # batch is claimed once and the repeats see the claimed row.
    firsts: dict[tuple[str, str], Claim] = {}
    for c in items:
        firsts.setdefault((c.spec.tenant_id, c.spec.job_id), c)
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
    # One statement shape for every batch: executemany with RETURNING is folded by SQLAlchemy into
    # multi-row INSERTs ("insertmanyvalues") without recompiling per batch size.
    claimed: dict[tuple[str, str], int] = {}
    cancelled_by: dict[tuple[str, str], str] = {}
    for r in await conn.execute(_claim_statement(conn), values):
        if r.tenant_id is None:
            continue
        claimed[(r.tenant_id, r.job_id)] = int(r.attempts)
        if r.cancel_requested_at is not None:  # a running task's mark: error_message holds the message
            cancelled_by[(r.tenant_id, r.job_id)] = r.error_message or "cancelled"
    repeats = [(c.spec.tenant_id, c.spec.job_id) for c in items if firsts[(c.spec.tenant_id, c.spec.job_id)] is not c]
    refused = await _select_rows(conn, [k for k in firsts if k not in claimed] + repeats)
    now = items[0].now
    await _insert_events(
        conn,
        [
            _event_dict(
                t,
                j,
                EventRow(
                    attempt=a, n=0, kind="state", status=TaskStatus.RUNNING.value, data={"attempt": a}, created_at=now
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

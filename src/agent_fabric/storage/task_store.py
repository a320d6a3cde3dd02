"""Task state in the database: claims with leases, outcomes, events, checkpoints.

Every write goes through the WriteBatcher (group commit). Ownership is fenced: a claim takes a
task only if it is new, queued, or its lease lapsed, and an outcome is written only by the
claim that holds it, so a process that stalled past its lease cannot overwrite a takeover.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ARRAY, Integer, String, Text, and_, bindparam, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.tables import Timestamp, checkpoints, task_events, tasks
from agent_fabric.storage.task_search import TaskSearch
from agent_fabric.storage.timestamps import aware, aware_or_none
from agent_fabric.tasks import TERMINAL_STATUSES, Priority, TaskSpec, TaskStatus

TERMINAL_VALUES = [s.value for s in TERMINAL_STATUSES]


def utcnow() -> datetime:
    return datetime.now(UTC)


def spec_hash(spec: TaskSpec) -> str:
    return hashlib.sha256(orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class TaskRecord:
    tenant_id: str
    job_id: str
    status: TaskStatus
    priority: str
    runtime: str
    agent_label: str
    spec: dict[str, Any]
    spec_hash: str
    event_id: str | None
    attempts: int
    owner: str | None
    result: Any
    error_code: str | None
    error_message: str | None
    usage: dict[str, Any] | None
    result_published: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> TaskRecord:
        m = row._mapping
        return cls(
            tenant_id=m["tenant_id"],
            job_id=m["job_id"],
            status=TaskStatus(m["status"]),
            priority=m["priority"],
            runtime=m["runtime"],
            agent_label=m["agent_label"],
            spec=m["spec"],
            spec_hash=m["spec_hash"],
            event_id=m["event_id"],
            attempts=m["attempts"],
            owner=m["owner"],
            result=m["result"],
            error_code=m["error_code"],
            error_message=m["error_message"],
            usage=m["usage"],
            result_published=bool(m["result_published"]),
            created_at=aware(m["created_at"]),
            started_at=aware_or_none(m["started_at"]),
            finished_at=aware_or_none(m["finished_at"]),
            updated_at=aware(m["updated_at"]),
        )


@dataclass(frozen=True)
class EventRow:
    attempt: int
    n: int
    kind: str
    status: str | None
    data: Any
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Claim:
    spec: TaskSpec
    spec_hash: str
    event_id: str | None
    owner: str
    lease_until: datetime
    now: datetime


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool
    attempts: int
    current: TaskRecord | None  # the row as it stands when the claim was refused
    # Taken over a task someone asked to cancel (its owner died first): the message it ends with.
    cancelled_by: str | None = None


@dataclass(frozen=True)
class Outcome:
    tenant_id: str
    job_id: str
    owner: str
    attempt: int
    status: TaskStatus
    result: Any
    error_code: str | None
    error_message: str | None
    usage: dict[str, Any]
    events: tuple[EventRow, ...]
    now: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Rejection:
    spec_data: dict[str, Any]
    tenant_id: str
    job_id: str
    error_code: str
    error_message: str
    event_id: str | None
    now: datetime = field(default_factory=utcnow)


def _new_row(spec: TaskSpec, hash_: str, event_id: str | None, now: datetime, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tenant_id": spec.tenant_id,
        "job_id": spec.job_id,
        "status": TaskStatus.QUEUED.value,
        "priority": spec.priority.value,
        "runtime": spec.agent_definition.runtime,
        "agent_label": spec.agent_definition.label,
        "spec": spec.model_dump(mode="json"),
        "spec_hash": hash_,
        "event_id": event_id,
        "attempts": 0,
        "owner": None,
        "lease_until": None,
        "result": None,
        "error_code": None,
        "error_message": None,
        "usage": None,
        "result_published": False,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "updated_at": now,
    }
    row.update(over)
    return row


def _insert_for(conn: AsyncConnection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


async def _select_rows(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TaskRecord]:
    if not keys:
        return {}
    # Two IN lists walk the primary key as one index scan; a row-value IN list becomes a
    # BitmapOr of one probe per key, whose planning alone dominates at a few hundred keys.
    wanted = set(keys)
    rows = await conn.execute(
        select(tasks).where(tasks.c.tenant_id.in_({t for t, _ in wanted}), tasks.c.job_id.in_({j for _, j in wanted}))
    )
    return {(r.tenant_id, r.job_id): TaskRecord.from_row(r) for r in rows if (r.tenant_id, r.job_id) in wanted}


# RETURNING makes SQLAlchemy fold an executemany into multi-row INSERTs ("insertmanyvalues"):
# one statement per batch for the database instead of one per event.
_INSERT_EVENTS = insert(task_events).returning(task_events.c.id)


async def _insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(_INSERT_EVENTS, rows)


def _event_dict(tenant_id: str, job_id: str, ev: EventRow) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "job_id": job_id,
        "attempt": ev.attempt,
        "n": ev.n,
        "kind": ev.kind,
        "status": ev.status,
        "data": ev.data,
        "created_at": ev.created_at,
    }


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

_PG_MARK_PUBLISHED = text("""
UPDATE tasks SET result_published = true FROM unnest(:tenants, :jobs) AS k(tenant_id, job_id)
WHERE tasks.tenant_id = k.tenant_id AND tasks.job_id = k.job_id
""").bindparams(bindparam("tenants", type_=ARRAY(String)), bindparam("jobs", type_=ARRAY(String)))


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


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
                "results": [_json_text(o.result) for o in outcomes],
                "codes": [o.error_code for o in outcomes],
                "messages": [o.error_message for o in outcomes],
                "usages": [_json_text(o.usage) for o in outcomes],
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


async def next_event_n(conn: AsyncConnection, tenant_id: str, job_id: str, attempt: int) -> int:
    """The next free position in a job's event log for `attempt`."""
    current = (
        await conn.execute(
            select(func.max(task_events.c.n)).where(
                task_events.c.tenant_id == tenant_id, task_events.c.job_id == job_id, task_events.c.attempt == attempt
            )
        )
    ).scalar()
    return 0 if current is None else int(current) + 1


async def _mark_published_op(conn: AsyncConnection, items: Sequence[tuple[str, str]]) -> list[None]:
    if conn.dialect.name == "postgresql":
        await conn.execute(_PG_MARK_PUBLISHED, {"tenants": [t for t, _ in items], "jobs": [j for _, j in items]})
        return [None] * len(items)
    await conn.execute(_MARK_ONE, [{"k_tenant": t, "k_job": j} for t, j in items])
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


# Runs inside the transaction that makes tasks terminal (outcome or rejection), with those tasks:
# budgets settle usage there, so it is counted exactly once.
FinishHook = Callable[[AsyncConnection, Sequence[TaskRecord]], Awaitable[None]]


class TaskStore:
    """`urgent`: the writer for claims of critical tasks (the shared one on SQLite). A claim in the
    shared writer waits behind every batch of outcomes, events and checkpoints in flight, tens of
    milliseconds at saturation; its own writer lets a critical task's single write go straight to
    the database."""

    def __init__(
        self,
        engine: AsyncEngine,
        batcher: WriteBatcher,
        finish_hooks: Sequence[FinishHook] = (),
        *,
        urgent: WriteBatcher,
    ) -> None:
        self._engine = engine
        self._batcher = batcher
        self._urgent = urgent
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
        writer = self._urgent if claim.spec.priority is Priority.CRITICAL else self._batcher
        result: ClaimResult = await writer.submit(_claim_op, claim)
        return result

    async def finish(self, outcome: Outcome) -> TaskRecord | None:
        """Write the outcome if this claim still holds the task; the finished record, or None if
        another attempt took the task over."""
        record: TaskRecord | None = await self._batcher.submit(self._finish_with_hooks, outcome)
        return record

    async def reject(self, rejection: Rejection) -> bool:
        inserted: bool = await self._batcher.submit(self._reject_with_hooks, rejection)
        return inserted

    async def mark_published(self, tenant_id: str, job_id: str) -> None:
        await self._batcher.submit(_mark_published_op, (tenant_id, job_id))

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

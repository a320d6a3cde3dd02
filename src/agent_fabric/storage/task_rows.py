"""Task rows: the records and value types every task write and read shares, and the helpers
that build rows and append to a job's event log (claims, outcomes, rejections, queue records and
transitions all use them)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.pg_raw import driver, json_text
from agent_fabric.storage.tables import task_events, tasks
from agent_fabric.storage.timestamps import aware, aware_or_none
from agent_fabric.tasks import TERMINAL_STATUSES, TaskSpec, TaskStatus

TERMINAL_VALUES = [s.value for s in TERMINAL_STATUSES]


def utcnow() -> datetime:
    return datetime.now(UTC)


# A task's spec is dumped to JSON for its row and hashed at every write of it (queued record,
# claim): a few hundred microseconds of pydantic each, at a thousand tasks a second. Specs are
# frozen, so both are kept for the most recent specs; the entry holds the spec itself, so its id
# cannot be reused while it is in here.
_SPEC_CACHE: OrderedDict[int, tuple[TaskSpec, dict[str, Any], str, str]] = OrderedDict()
_SPEC_CACHE_MAX = 8192


def _spec_dump(spec: TaskSpec) -> tuple[dict[str, Any], str, str]:
    """The spec as JSON data, its hash, and its JSON text (the hashed encoding: a JSONB column
    does not keep key order, so the sorted text stores the same value; one encoding, not two)."""
    hit = _SPEC_CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1], hit[2], hit[3]
    data = spec.model_dump(mode="json")
    encoded = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    hash_ = hashlib.sha256(encoded).hexdigest()
    text_ = encoded.decode()
    _SPEC_CACHE[id(spec)] = (spec, data, hash_, text_)
    if len(_SPEC_CACHE) > _SPEC_CACHE_MAX:
        _SPEC_CACHE.popitem(last=False)
    return data, hash_, text_


def spec_hash(spec: TaskSpec) -> str:
    return _spec_dump(spec)[1]


def spec_json(spec: TaskSpec) -> dict[str, Any]:
    """The spec as stored in its row (shared: do not modify)."""
    return _spec_dump(spec)[0]


def spec_json_text(spec: TaskSpec) -> str:
    """The spec's JSON text for a JSONB column written from text (Postgres)."""
    return _spec_dump(spec)[2]


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
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TaskRecord:
        """From a row's mapping, or the values a statement just wrote."""
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
        "spec": spec_json(spec),
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


# Postgres: one fixed statement over unnest()ed arrays, prepared once per connection whatever the
# batch size, sent to asyncpg as is (storage/pg_raw.py); SQLAlchemy's executemany spent more on
# building parameters than the database did.
_PG_INSERT_EVENTS = """
INSERT INTO task_events (tenant_id, job_id, attempt, n, kind, status, data, created_at)
SELECT t, j, a, n, k, s, d::jsonb, c
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])
     AS v(t, j, a, n, k, s, d, c)
"""


async def _insert_events(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        await conn.execute(_INSERT_EVENTS, rows)
        return
    await (await driver(conn)).execute(
        _PG_INSERT_EVENTS,
        [r["tenant_id"] for r in rows],
        [r["job_id"] for r in rows],
        [r["attempt"] for r in rows],
        [r["n"] for r in rows],
        [r["kind"] for r in rows],
        [r["status"] for r in rows],
        [json_text(r["data"]) for r in rows],
        [r["created_at"] for r in rows],
    )


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


# Postgres: new rows (status as given, never claimed) from arrays, skipping jobs that have a row
# already; one statement prepared once per connection whatever the batch size (queued records of
# a flood), sent to asyncpg as is (storage/pg_raw.py).
_PG_INSERT_NEW = """
INSERT INTO tasks (tenant_id, job_id, status, priority, runtime, agent_label, spec, spec_hash, event_id,
                   attempts, result_published, created_at, updated_at)
SELECT t, j, st, pr, rt, al, sp::jsonb, sh, ev, 0, false, n, n
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::timestamptz[])
     AS v(t, j, st, pr, rt, al, sp, sh, ev, n)
ON CONFLICT (tenant_id, job_id) DO NOTHING
RETURNING tasks.tenant_id, tasks.job_id
"""


async def insert_new_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert rows built by `_new_row` (not claimed: attempts 0, no owner, no outcome) where the
    job has no row yet; the keys that went in. Rows must have distinct keys."""
    if conn.dialect.name != "postgresql":
        stmt = _insert_for(conn)(tasks).on_conflict_do_nothing().returning(tasks.c.tenant_id, tasks.c.job_id)
        return {(r.tenant_id, r.job_id) for r in await conn.execute(stmt, rows)}
    result = await (await driver(conn)).fetch(
        _PG_INSERT_NEW,
        [r["tenant_id"] for r in rows],
        [r["job_id"] for r in rows],
        [r["status"] for r in rows],
        [r["priority"] for r in rows],
        [r["runtime"] for r in rows],
        [r["agent_label"] for r in rows],
        [json_text(r["spec"]) for r in rows],
        [r["spec_hash"] for r in rows],
        [r["event_id"] for r in rows],
        [r["created_at"] for r in rows],
    )
    return {(r[0], r[1]) for r in result}

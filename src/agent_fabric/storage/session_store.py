"""Agent Zero session rows and their event log: the conditional statements that keep them honest.

- A session is created only while its POD has fewer than `max_sessions` open ones: one
  INSERT ... SELECT ... WHERE count < max (atomic on SQLite's single writer), serialised per
  tenant on Postgres by a transaction-level advisory lock, so two replicas never both pass.
- A message takes the session's `busy` flag with a conditional UPDATE: one message at a time.
- Termination is a conditional UPDATE too: of two replicas (or a sweep and a manual terminate)
  exactly one wins and does the cleanup.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.pg_raw import driver
from agent_fabric.storage.tables import agent_session_events, agent_sessions
from agent_fabric.storage.timestamps import aware_or_none

ACTIVE = "active"  # a message is being answered
IDLE = "idle"  # waiting for the next message
ERROR = "error"  # the last message failed; the session still takes messages
TERMINATED = "terminated"
STATUSES = (ACTIVE, IDLE, ERROR, TERMINATED)

_s = agent_sessions
_e = agent_session_events


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    tenant_id: str
    user_id: str
    agent_zero_session_id: str | None
    instance_url: str | None
    agent_profile: str | None
    status: str
    mode: str
    started_at: datetime
    last_activity_at: datetime
    terminated_at: datetime | None
    estimated_cost_usd: float
    message_count: int
    busy: bool
    last_error: str | None
    last_seq: int
    log_floor: int

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)  # SQLAlchemy row or asyncpg record
        for key in ("started_at", "last_activity_at", "terminated_at"):
            m[key] = aware_or_none(m[key])
        return cls(**m)

    def view(self) -> dict[str, Any]:
        """The seed's AgentSession fields plus where the chat lives; no internal flags."""
        return {
            "id": self.id,
            "pod_id": self.tenant_id,
            "user_id": self.user_id,
            "agent_zero_session_id": self.agent_zero_session_id,
            "instance_url": self.instance_url,
            "agent_profile": self.agent_profile,
            "status": self.status,
            "mode": self.mode,
            "started_at": self.started_at,
            "last_activity_at": self.last_activity_at,
            "terminated_at": self.terminated_at,
            "estimated_cost_usd": self.estimated_cost_usd,
            "message_count": self.message_count,
            "last_event_id": self.last_seq,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str  # message | progress | response | error | terminated
    data: Any
    at: datetime

    def wire(self, session_id: str) -> dict[str, Any]:
        return {"session_id": session_id, "id": self.seq, "kind": self.kind, "data": self.data, "at": self.at}


def tenant_lock_key(tenant_id: str) -> int:
    """A stable signed 64-bit advisory lock key per tenant's session count."""
    digest = hashlib.blake2b(f"agent_sessions:{tenant_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def create(conn: AsyncConnection, row: dict[str, Any], max_sessions: int) -> bool:
    """Insert the session unless the POD is at its limit."""
    open_count = (
        select(func.count())
        .select_from(_s)
        .where(_s.c.tenant_id == row["tenant_id"], _s.c.status != TERMINATED)
        .scalar_subquery()
    )
    if conn.dialect.name == "postgresql":
        # Under READ COMMITTED two transactions would both count 9 of 10: count under a lock.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": tenant_lock_key(row["tenant_id"])})
        if (await conn.execute(select(open_count))).scalar_one() >= max_sessions:
            return False
        await conn.execute(insert(_s).values(**row))
        return True
    # SQLite: one statement holds the single write lock from the count to the insert.
    values = select(*(literal(v, type_=_s.c[k].type).label(k) for k, v in row.items())).where(open_count < max_sessions)
    result = await conn.execute(insert(_s).from_select(list(row), values))
    return bool(result.rowcount)


# acquire() on Postgres: one statement, one round trip on the message's critical path
# (data-modifying CTEs), sent to asyncpg as is (storage/pg_raw.py) and prepared once per
# connection: through SQLAlchemy, building the cache key of this statement and processing its
# row cost more of the process's CPU than the database spent running it.
# Committed without waiting for the WAL flush (synchronous_commit off for this statement's own
# transaction): the hold is visible to every replica at once, which is what keeps a second
# message out, and it becomes durable no later than the message's release, whose synchronous
# commit flushes the WAL up to and including it, before the caller is answered. A database crash
# in between can lose only the hold and the message event of a message whose release then fails too.
_PG_ACQUIRE = f"""
WITH taken AS (
    UPDATE agent_sessions SET busy = true, status = '{ACTIVE}', last_activity_at = $4::timestamptz,
                              last_seq = last_seq + 1
    WHERE id = $1::text AND tenant_id = $2::text AND mode = $3::text AND busy = false AND status <> '{TERMINATED}'
    RETURNING {", ".join(c.name for c in _s.c)}
), logged AS (
    INSERT INTO agent_session_events (session_id, seq, kind, data, created_at)
    SELECT id, last_seq, 'message', ($5::text)::jsonb, $4::timestamptz FROM taken
)
SELECT * FROM taken WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL
"""


async def acquire(
    engine: AsyncEngine, tenant_id: str, session_id: str, mode: str, message: dict[str, Any], now: datetime
) -> tuple[SessionRecord, Event] | None:
    """Mark the session busy for one message and log the message (the session's `last_seq` is its
    seq); None when it is busy, terminated, not the tenant's, or of the other mode."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = await (await driver(conn)).fetchrow(
                _PG_ACQUIRE, session_id, tenant_id, mode, now, orjson.dumps(message).decode()
            )
        if row is None:
            return None
        session = SessionRecord.from_row(row)
        return session, Event(session.last_seq, "message", message, now)
    take = (
        update(_s)
        .where(
            _s.c.id == session_id,
            _s.c.tenant_id == tenant_id,
            _s.c.mode == mode,
            _s.c.busy.is_(False),
            _s.c.status != TERMINATED,
        )
        .values(busy=True, status=ACTIVE, last_activity_at=now, last_seq=_s.c.last_seq + 1)
        .returning(*_s.c)
    )
    async with engine.begin() as conn:
        row = (await conn.execute(take)).first()
        if row is None:
            return None
        session = SessionRecord.from_row(row)
        event = Event(session.last_seq, "message", message, now)
        await insert_events(conn, session_id, [event])
    return session, event


@dataclass(frozen=True, slots=True)
class Add:
    """A counter's new value as an increment done in SQL (never read-modify-write)."""

    amount: float


async def release(engine: AsyncEngine, session_id: str, events: Sequence[Event], values: dict[str, Any]) -> bool:
    """Store the message's last events and end its hold, atomically; False if the session was
    terminated meanwhile (the events are stored all the same: the caller removes them).
    `values`: the session's new column values, `Add` for counters."""
    if engine.dialect.name == "postgresql":
        columns = tuple(sorted((k, isinstance(v, Add)) for k, v in values.items()))
        new_values = [v.amount if isinstance(v, Add) else v for k, v in sorted(values.items())]
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            status: str = await (await driver(conn)).execute(
                _pg_release(columns),
                session_id,
                [e.seq for e in events],
                [e.kind for e in events],
                [orjson.dumps(e.data).decode() for e in events],
                [e.at for e in events],
                *new_values,
            )
        return status.rsplit(" ", 1)[-1] != "0"  # "UPDATE <rows>"
    end_hold = (
        update(_s)
        .where(_s.c.id == session_id, _s.c.status != TERMINATED)
        .values(busy=False, **{k: _s.c[k] + v.amount if isinstance(v, Add) else v for k, v in values.items()})
    )
    async with engine.begin() as conn:
        await insert_events(conn, session_id, events)
        return bool((await conn.execute(end_hold)).rowcount)


@functools.lru_cache(maxsize=64)
def _pg_release(columns: tuple[tuple[str, bool], ...]) -> str:
    """release() on Postgres for the columns it sets (which of them counters): one statement (a
    data-modifying CTE always runs to completion), one round trip, the events as arrays, so one
    text per set of columns whatever their number; sent to asyncpg as is, prepared once per
    connection. The column names are the code's own (answered(), failed()), checked here."""
    sets = ["busy = false"]
    for n, (column, is_counter) in enumerate(columns, start=6):
        if column not in _s.c:
            raise ValueError(f"agent_sessions has no column {column!r}")
        sets.append(f"{column} = {column} + ${n}" if is_counter else f"{column} = ${n}")
    return f"""
WITH stored_events AS (
    INSERT INTO agent_session_events (session_id, seq, kind, data, created_at)
    SELECT $1::text, e.seq, e.kind, e.data::jsonb, e.at
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) AS e(seq, kind, data, at)
)
UPDATE agent_sessions SET {", ".join(sets)} WHERE id = $1::text AND status <> '{TERMINATED}'
"""


def answered(context_id: str, instance_url: str, cost_usd: float, log_floor: int) -> dict[str, Any]:
    """The session's new values after an answer (counters incremented in SQL, never read-modify-write)."""
    return {
        "status": IDLE,
        "log_floor": log_floor,
        "agent_zero_session_id": context_id,
        "instance_url": instance_url,
        "message_count": Add(1),
        "estimated_cost_usd": Add(cost_usd),
        "last_error": None,
    }


def failed(error: str) -> dict[str, Any]:
    return {"status": ERROR, "last_error": error[:2000]}


async def place(conn: AsyncConnection, session_id: str, context_id: str, instance_url: str) -> None:
    """Where the session's chat lives, as soon as Agent Zero has named it."""
    await conn.execute(
        update(_s).where(_s.c.id == session_id).values(agent_zero_session_id=context_id, instance_url=instance_url)
    )


async def touch(conn: AsyncConnection, session_id: str, last_seq: int, now: datetime) -> None:
    await conn.execute(
        update(_s)
        .where(_s.c.id == session_id, _s.c.status != TERMINATED)
        .values(last_seq=last_seq, last_activity_at=now)
    )


async def get(engine: AsyncEngine, session_id: str) -> SessionRecord | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(_s).where(_s.c.id == session_id))).first()
    return SessionRecord.from_row(row) if row is not None else None


async def page(
    engine: AsyncEngine, tenant_id: str, status: str | None, limit: int, offset: int
) -> tuple[list[SessionRecord], int]:
    """The POD's sessions, newest first, and how many match in all."""
    where = [_s.c.tenant_id == tenant_id]
    if status is not None:
        where.append(_s.c.status == status)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(_s).where(*where).order_by(_s.c.started_at.desc(), _s.c.id).limit(limit).offset(offset)
        )
        total = (await conn.execute(select(func.count()).select_from(_s).where(*where))).scalar_one()
    return [SessionRecord.from_row(r) for r in rows], int(total)


async def terminate(
    conn: AsyncConnection,
    session_id: str,
    now: datetime,
    *,
    idle_before: datetime | None = None,
    stale_before: datetime | None = None,
) -> SessionRecord | None:
    """Mark the session terminated; None if it already was (or, for the idle sweep, became active).

    With `idle_before`, only a session idle since then qualifies, and a busy one only if its hold
    is older than `stale_before` (its replica died mid-message)."""
    where = [_s.c.id == session_id, _s.c.status != TERMINATED]
    if idle_before is not None:
        where.append(_s.c.last_activity_at < idle_before)
        where.append(or_(_s.c.busy.is_(False), _s.c.last_activity_at < (stale_before or idle_before)))
    row = (
        await conn.execute(
            update(_s)
            .where(*where)
            .values(status=TERMINATED, terminated_at=now, busy=False, last_activity_at=now)
            .returning(*_s.c)
        )
    ).first()
    return SessionRecord.from_row(row) if row is not None else None


async def idle_candidates(engine: AsyncEngine, before: datetime, limit: int) -> list[SessionRecord]:
    """Open sessions without activity since `before`, oldest first (the sweep filters per tenant)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(_s)
            .where(_s.c.status != TERMINATED, _s.c.last_activity_at < before)
            .order_by(_s.c.last_activity_at)
            .limit(limit)
        )
    return [SessionRecord.from_row(r) for r in rows]


def _event_row(session_id: str, e: Event) -> dict[str, Any]:
    return {"session_id": session_id, "seq": e.seq, "kind": e.kind, "data": e.data, "created_at": e.at}


async def insert_events(conn: AsyncConnection, session_id: str, events: Sequence[Event]) -> None:
    if events:
        await conn.execute(insert(_e), [_event_row(session_id, e) for e in events])


async def events_after(engine: AsyncEngine, session_id: str, after: int) -> list[Event]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(_e).where(_e.c.session_id == session_id, _e.c.seq > after).order_by(_e.c.seq))
    return [Event(r.seq, r.kind, r.data, aware_or_none(r.created_at) or r.created_at) for r in rows]


async def delete_events(engine: AsyncEngine, session_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(_e).where(_e.c.session_id == session_id))

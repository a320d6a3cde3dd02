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

from sqlalchemy import Executable, bindparam, delete, func, insert, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
        m = dict(row._mapping)
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


def _pg_acquire() -> Executable:
    """acquire() on Postgres: one statement, one round trip on the message's critical path
    (data-modifying CTEs). Built once: constructing it (a CTE over an UPDATE ... RETURNING) cost
    more Python than executing it; the values are bound parameters."""
    taken = (
        update(_s)
        .where(
            _s.c.id == bindparam("p_session"),
            _s.c.tenant_id == bindparam("p_tenant"),
            _s.c.mode == bindparam("p_mode"),
            _s.c.busy.is_(False),
            _s.c.status != TERMINATED,
        )
        .values(
            busy=True,
            status=ACTIVE,
            last_activity_at=bindparam("p_now", type_=_s.c.last_activity_at.type),
            last_seq=_s.c.last_seq + 1,
        )
        .returning(*_s.c)
        .cte("taken")
    )
    logged = insert(_e).from_select(
        ["session_id", "seq", "kind", "data", "created_at"],
        select(
            taken.c.id,
            taken.c.last_seq,
            literal("message", type_=_e.c.kind.type),
            bindparam("p_message", type_=_e.c.data.type),
            bindparam("p_now", type_=_e.c.created_at.type),
        ),
    )
    # Committed without waiting for the WAL flush (synchronous_commit off for this statement's
    # own transaction): the hold is visible to every replica at once, which is what keeps a
    # second message out, and it becomes durable no later than the message's release, whose
    # synchronous commit flushes the WAL up to and including it, before the caller is answered.
    # A database crash in between can lose only the hold and the message event of a message
    # whose release then fails too.
    no_flush_wait = func.set_config("synchronous_commit", "off", True).is_not(None)
    return select(taken).add_cte(logged.cte("logged")).where(no_flush_wait)


_PG_ACQUIRE = _pg_acquire()


async def acquire(
    engine: AsyncEngine, tenant_id: str, session_id: str, mode: str, message: dict[str, Any], now: datetime
) -> tuple[SessionRecord, Event] | None:
    """Mark the session busy for one message and log the message (the session's `last_seq` is its
    seq); None when it is busy, terminated, not the tenant's, or of the other mode."""
    if engine.dialect.name == "postgresql":
        params = {"p_session": session_id, "p_tenant": tenant_id, "p_mode": mode, "p_now": now, "p_message": message}
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await conn.execute(_PG_ACQUIRE, params)).first()
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
        shape = (len(events), tuple(sorted((k, isinstance(v, Add)) for k, v in values.items())))
        params: dict[str, Any] = {"p_session": session_id}
        for i, e in enumerate(events):
            params.update({f"e{i}_seq": e.seq, f"e{i}_kind": e.kind, f"e{i}_data": e.data, f"e{i}_at": e.at})
        params.update({f"v_{k}": v.amount if isinstance(v, Add) else v for k, v in values.items()})
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return bool((await conn.execute(_pg_release(shape), params)).rowcount)
    end_hold = (
        update(_s)
        .where(_s.c.id == session_id, _s.c.status != TERMINATED)
        .values(busy=False, **{k: _s.c[k] + v.amount if isinstance(v, Add) else v for k, v in values.items()})
    )
    async with engine.begin() as conn:
        await insert_events(conn, session_id, events)
        return bool((await conn.execute(end_hold)).rowcount)


@functools.lru_cache(maxsize=64)
def _pg_release(shape: tuple[int, tuple[tuple[str, bool], ...]]) -> Executable:
    """release() on Postgres for `shape` (how many events; which columns, which of them counters):
    one statement (a data-modifying CTE always runs to completion), one round trip, not four.
    Built once per shape with bound parameters, like _pg_acquire; a message without progress
    events in its last moments always has the same shape."""
    n_events, columns = shape
    stored = (
        insert(_e)
        .values(
            [
                {
                    "session_id": bindparam("p_session", type_=_e.c.session_id.type),
                    "seq": bindparam(f"e{i}_seq", type_=_e.c.seq.type),
                    "kind": bindparam(f"e{i}_kind", type_=_e.c.kind.type),
                    "data": bindparam(f"e{i}_data", type_=_e.c.data.type),
                    "created_at": bindparam(f"e{i}_at", type_=_e.c.created_at.type),
                }
                for i in range(n_events)
            ]
        )
        .cte("stored_events")
    )
    new_values: dict[str, Any] = {}
    for column, is_counter in columns:
        value = bindparam(f"v_{column}", type_=_s.c[column].type)
        new_values[column] = _s.c[column] + value if is_counter else value
    return (
        update(_s)
        .where(_s.c.id == bindparam("p_session", type_=_s.c.id.type), _s.c.status != TERMINATED)
        .values(busy=False, **new_values)
        .add_cte(stored)
    )


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

"""Rows of `fleet_agents`: one per fleet agent, read and changed only through these functions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from agent_fabric.storage.tables import fleet_agents as t
from agent_fabric.storage.timestamps import aware_or_none

ORCHESTRATOR = "orchestrator"
SPECIALIST = "specialist"

# Stored statuses. `busy` is never stored: it is read from the chat when the agent is looked at.
STARTING = "starting"  # the place is taken, the chat is being opened
IDLE = "idle"  # the chat exists; what it is doing now is read live
ERROR = "error"  # Agent Zero lost the chat: nothing will bring it back
TERMINATED = "terminated"
BUSY = "busy"
LIVE = (STARTING, IDLE, ERROR)

# Namespace of the advisory locks taken per POD (pg_advisory_xact_lock(int, int)).
LOCK_CLASS = 41_04


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    tenant_id: str
    role: str
    profile: str | None
    parent_id: str | None
    instance_url: str | None
    context_id: str | None
    status: str
    mode: str
    created_by: str
    created_at: datetime
    last_activity_at: datetime
    terminated_at: datetime | None
    last_error: str | None
    claimed_by: str | None = None  # job_id of the task running in the chat (fleet_routing.py)
    claimed_until: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> AgentRecord:
        m = dict(row._mapping)
        for key in ("created_at", "last_activity_at", "terminated_at", "claimed_until"):
            m[key] = aware_or_none(m[key])
        return cls(**m)

    @property
    def live(self) -> bool:
        return self.status != TERMINATED

    def holder(self, now: datetime) -> str | None:
        """The job whose claim on the chat has not lapsed at `now`, if any."""
        if self.claimed_by is None or self.claimed_until is None or self.claimed_until <= now:
            return None
        return self.claimed_by


async def lock_pod(conn: AsyncConnection, tenant_id: str) -> None:
    """Serialise fleet changes of one POD across replicas until the transaction ends (Postgres)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(:pod))"), {"cls": LOCK_CLASS, "pod": tenant_id}
        )


async def live_agents(conn: AsyncConnection, tenant_id: str) -> list[AgentRecord]:
    rows = await conn.execute(
        select(t).where(t.c.tenant_id == tenant_id, t.c.status.in_(LIVE)).order_by(t.c.created_at, t.c.id)
    )
    return [AgentRecord.from_row(r) for r in rows]


async def all_agents(conn: AsyncConnection, tenant_id: str, limit: int) -> list[AgentRecord]:
    rows = await conn.execute(
        select(t).where(t.c.tenant_id == tenant_id).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
    )
    return [AgentRecord.from_row(r) for r in rows]


async def get_agent(conn: AsyncConnection, tenant_id: str, agent_id: str) -> AgentRecord | None:
    row = (await conn.execute(select(t).where(t.c.tenant_id == tenant_id, t.c.id == agent_id))).first()
    return AgentRecord.from_row(row) if row else None


async def agents_per_instance(conn: AsyncConnection) -> dict[str, int]:
    """Live agents on each instance URL, every POD's: a chat costs its instance memory and threads."""
    rows = await conn.execute(
        select(t.c.instance_url, func.count())
        .where(t.c.status.in_(LIVE), t.c.instance_url.is_not(None))
        .group_by(t.c.instance_url)
    )
    return {str(url): int(n) for url, n in rows}


async def insert_agent(conn: AsyncConnection, record: AgentRecord) -> None:
    values = {name: getattr(record, name) for name in AgentRecord.__slots__}
    await conn.execute(insert(t).values(**values))


async def opened(
    conn: AsyncConnection, agent_id: str, instance_url: str, context_id: str, now: datetime
) -> AgentRecord | None:
    """starting -> idle with its chat; None if the agent was terminated while the chat opened."""
    row = (
        await conn.execute(
            update(t)
            .where(t.c.id == agent_id, t.c.status == STARTING)
            .values(instance_url=instance_url, context_id=context_id, status=IDLE, last_activity_at=now)
            .returning(*t.c)
        )
    ).first()
    return AgentRecord.from_row(row) if row else None


async def drop_reservation(conn: AsyncConnection, agent_id: str) -> None:
    """The chat could not be opened: the agent never existed, so its place is given back."""
    await conn.execute(delete(t).where(t.c.id == agent_id, t.c.status == STARTING))


async def mark_lost(conn: AsyncConnection, agent_id: str, reason: str) -> None:
    await conn.execute(
        update(t).where(t.c.id == agent_id, t.c.status == IDLE).values(status=ERROR, last_error=reason[:2000])
    )


async def mark_terminated(conn: AsyncConnection, ids: Iterable[str], now: datetime) -> list[AgentRecord]:
    """Each still-live agent -> terminated (once: a concurrent terminate gets nothing back)."""
    ended = []
    for agent_id in ids:
        row = (
            await conn.execute(
                update(t)
                .where(t.c.id == agent_id, t.c.status.in_(LIVE))
                .values(status=TERMINATED, terminated_at=now, last_activity_at=now)
                .returning(*t.c)
            )
        ).first()
        if row is not None:
            ended.append(AgentRecord.from_row(row))
    return ended


async def note(conn: AsyncConnection, notes: dict[str, str]) -> None:
    for agent_id, text_ in notes.items():
        await conn.execute(update(t).where(t.c.id == agent_id).values(last_error=text_[:2000]))


async def claim(
    conn: AsyncConnection, agent_id: str, job_id: str, until: datetime, now: datetime
) -> AgentRecord | None:
    """The idle agent's chat for `job_id` until `until`, if nobody else holds it (one conditional
    UPDATE, so two replicas cannot both win); the job's own claim is taken again. None: not won."""
    free = or_(t.c.claimed_by.is_(None), t.c.claimed_by == job_id, t.c.claimed_until < now)
    row = (
        await conn.execute(
            update(t)
            .where(t.c.id == agent_id, t.c.status == IDLE, free)
            .values(claimed_by=job_id, claimed_until=until, last_activity_at=now)
            .returning(*t.c)
        )
    ).first()
    return AgentRecord.from_row(row) if row else None


async def renew_claim(conn: AsyncConnection, agent_id: str, job_id: str, until: datetime) -> bool:
    """Push the job's claim to `until`; False if the job no longer holds it."""
    done = await conn.execute(update(t).where(t.c.id == agent_id, t.c.claimed_by == job_id).values(claimed_until=until))
    return bool(done.rowcount)


async def release_claim(conn: AsyncConnection, agent_id: str, job_id: str, now: datetime) -> None:
    """The job is done with the chat; last_activity_at orders the next choice (least recently used)."""
    await conn.execute(
        update(t)
        .where(t.c.id == agent_id, t.c.claimed_by == job_id)
        .values(claimed_by=None, claimed_until=None, last_activity_at=now)
    )

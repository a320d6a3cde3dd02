"""The agent registry: one row per agent, its lifecycle state with timestamps and reasons, and
the history of every transition. Every change is audited in the transaction that makes it.

Look an agent up with `AgentRegistry.get(agent_id)`; the record carries what the process runtime
needs to start it: `package_path`, `command` (relative to the package), `runtime`, `tenant_id`.
Its effective configuration comes from agents/config.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.agents.manifest import Manifest
from agent_fabric.agents.records import (
    AgentRecord,
    Inserted,
    Transition,
    catalogue_row,
    new_agent_id,
    record_from_row,
    registered_row,
)
from agent_fabric.agents.states import DELETABLE, AgentStatus, allowed, refusal
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Conflict, NotFound
from agent_fabric.storage.agent_tables import agent_transitions, agents
from agent_fabric.storage.timestamps import aware

ModeFor = Callable[[str | None], str]

# The record types live in agents/records.py; they are part of this module's interface too.
__all__ = ["AgentRecord", "AgentRegistry", "ModeFor", "Transition", "new_agent_id", "record_from_row"]


class AgentRegistry:
    def __init__(self, engine: AsyncEngine, mode_for: ModeFor) -> None:
        self._engine = engine
        self._mode_for = mode_for

    # -- reads --
    async def get(self, agent_id: str) -> AgentRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).first()
        return record_from_row(row) if row else None

    async def visible(self, agent_id: str, tenant_id: str | None) -> AgentRecord:
        """The agent as a caller of `tenant_id` (None: admin, every tenant) may see it. Another
        tenant's agent does not exist for the caller (404); catalogue entries are visible to all."""
        record = await self.get(agent_id)
        if record is None or (tenant_id is not None and record.tenant_id not in (None, tenant_id)):
            raise NotFound(f"no agent {agent_id!r}")
        return record

    async def list_agents(
        self,
        *,
        tenant_id: str | None,
        status: str | None = None,
        agent_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[AgentRecord], int]:
        """Newest first. `tenant_id` None: every agent; else that tenant's and the catalogue's."""
        where = []
        if tenant_id is not None:
            where.append(or_(agents.c.tenant_id == tenant_id, agents.c.tenant_id.is_(None)))
        if status is not None:
            where.append(agents.c.status == status)
        if agent_type is not None:
            where.append(agents.c.agent_type == agent_type)
        cond = and_(*where) if where else None
        stmt = select(agents).order_by(agents.c.created_at.desc(), agents.c.id).limit(limit).offset(offset)
        count = select(func.count()).select_from(agents)
        if cond is not None:
            stmt, count = stmt.where(cond), count.where(cond)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            total = int((await conn.execute(count)).scalar_one())
        return [record_from_row(r) for r in rows], total

    async def with_package(self, name: str, version: str) -> list[AgentRecord]:
        """Every agent made from package `name` `version` (discovered or registered)."""
        stmt = select(agents).where(agents.c.name == name, agents.c.version == version)
        async with self._engine.connect() as conn:
            return [record_from_row(r) for r in await conn.execute(stmt)]

    async def history(self, agent_id: str) -> list[Transition]:
        stmt = (
            select(agent_transitions).where(agent_transitions.c.agent_id == agent_id).order_by(agent_transitions.c.seq)
        )
        async with self._engine.connect() as conn:
            return [
                Transition(r.seq, r.from_status, r.to_status, r.reason, r.actor, aware(r.at))
                for r in await conn.execute(stmt)
            ]

    # -- writes --
    async def record_discovered(self, manifest: Manifest, actor: str) -> AgentRecord:
        """A catalogue row for a valid package found on disk."""
        now = datetime.now(UTC)
        agent_id, reason = new_agent_id(manifest.agent_type), f"package found at {manifest.path}"
        row = catalogue_row(agent_id, manifest, reason, actor, now)
        async with self._engine.begin() as conn:
            await conn.execute(insert(agents).values(row))
            await self._log_transition(conn, agent_id, None, AgentStatus.DISCOVERED, reason, actor, now)
            await append(conn, self._entry("agent.discovered", actor, None, agent_id, request=_package(manifest)))
        return record_from_row(Inserted(row))

    async def refresh_discovered(self, agent_id: str, manifest: Manifest) -> bool:
        """Bring a catalogue row up to date with its package (edited in place, same version)."""
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(agents)
                .where(agents.c.id == agent_id, agents.c.status == AgentStatus.DISCOVERED.value)
                .values(
                    description=manifest.description,
                    agent_type=manifest.agent_type,
                    runtime=manifest.runtime,
                    command=manifest.command or None,
                    subscribed_topics=list(manifest.subscribed_topics),
                    findings_topic=manifest.findings_topic,
                    manifest=manifest.values,
                    updated_at=datetime.now(UTC),
                    revision=agents.c.revision + 1,
                )
            )
        return bool(changed.rowcount)

    async def forget_discovered(self, agent_id: str, reason: str, actor: str) -> bool:
        """Drop a catalogue row whose package left the disk (registered agents are never dropped here)."""
        async with self._engine.begin() as conn:
            gone = await conn.execute(
                delete(agents).where(agents.c.id == agent_id, agents.c.status == AgentStatus.DISCOVERED.value)
            )
            if not gone.rowcount:
                return False
            await conn.execute(delete(agent_transitions).where(agent_transitions.c.agent_id == agent_id))
            await append(conn, self._entry("agent.forgotten", actor, None, agent_id, request={"reason": reason}))
        return True

    async def transition(self, agent_id: str, target: AgentStatus, *, reason: str | None, actor: str) -> AgentRecord:
        """Move an agent to `target` (the process runtime drives running/stopped/failed). 409 when
        the move makes no sense from where the agent is; safe against a concurrent move."""
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update())).first()
            if row is None:
                raise NotFound(f"no agent {agent_id!r}")
            current = AgentStatus(row.status)
            if not allowed(current, target):
                raise Conflict(refusal(current, target), code="invalid_transition", agent_status=current.value)
            await self._set_status(conn, row, current, target, reason, actor, now)
            await append(
                conn,
                self._entry(
                    f"agent.{target.value}",
                    actor,
                    row.tenant_id,
                    agent_id,
                    request={"from": current.value, "to": target.value, "reason": reason},
                ),
            )
            fresh = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        return record_from_row(fresh)

    async def _set_status(
        self,
        conn: AsyncConnection,
        row: Any,
        current: AgentStatus,
        target: AgentStatus,
        reason: str | None,
        actor: str,
        now: datetime,
        **values: Any,
    ) -> None:
        # `status == current` in the WHERE: a concurrent move between our read and write loses.
        moved = await conn.execute(
            update(agents)
            .where(agents.c.id == row.id, agents.c.status == current.value)
            .values(
                status=target.value,
                status_reason=reason,
                status_changed_at=now,
                updated_at=now,
                revision=agents.c.revision + 1,
                **values,
            )
        )
        if not moved.rowcount:
            raise Conflict(f"agent {row.id!r} changed state concurrently; retry", code="invalid_transition")
        await self._log_transition(conn, row.id, current, target, reason, actor, now)

    async def _log_transition(
        self,
        conn: AsyncConnection,
        agent_id: str,
        current: AgentStatus | None,
        target: AgentStatus,
        reason: str | None,
        actor: str,
        now: datetime,
    ) -> None:
        seq = (
            await conn.execute(
                select(func.coalesce(func.max(agent_transitions.c.seq), 0)).where(
                    agent_transitions.c.agent_id == agent_id
                )
            )
        ).scalar_one()
        await conn.execute(
            insert(agent_transitions).values(
                agent_id=agent_id,
                seq=int(seq) + 1,
                from_status=current.value if current else None,
                to_status=target.value,
                reason=reason,
                actor=actor[:128],
                at=now,
            )
        )

    async def register_in(
        self,
        conn: AsyncConnection,
        *,
        name: str,
        version: str,
        agent_type: str,
        tenant_id: str,
        actor: str,
        description: str | None = None,
        nats_password: str | None = None,
    ) -> AgentRecord:
        """Bind an agent to `tenant_id` in the caller's transaction: the package's catalogue row
        moves discovered -> registered (keeping its id); without one, a new row starts registered,
        copying the package from an agent already made from it, else `external` (runs elsewhere)."""
        now = datetime.now(UTC)
        same = and_(agents.c.name == name, agents.c.version == version, agents.c.agent_type == agent_type)
        listed = (
            await conn.execute(
                select(agents)
                .where(same, agents.c.status == AgentStatus.DISCOVERED.value, agents.c.tenant_id.is_(None))
                .limit(1)
                .with_for_update()
            )
        ).first()
        reason = f"registered in tenant {tenant_id} by {actor}"
        extra: dict[str, Any] = {"tenant_id": tenant_id, "registered_at": now, "nats_password": nats_password}
        if description:
            extra["description"] = description
        if listed is not None:
            await self._set_status(
                conn, listed, AgentStatus.DISCOVERED, AgentStatus.REGISTERED, reason, actor, now, **extra
            )
            agent_id = listed.id
        else:
            template = (
                await conn.execute(select(agents).where(same, agents.c.package_path.is_not(None)).limit(1))
            ).first()
            agent_id = new_agent_id(agent_type)
            row = registered_row(agent_id, name, version, agent_type, template, actor, now)
            row.update(status=AgentStatus.REGISTERED.value, status_reason=reason, **extra)
            await conn.execute(insert(agents).values(row))
            await self._log_transition(conn, agent_id, None, AgentStatus.REGISTERED, reason, actor, now)
        fresh = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        return record_from_row(fresh)

    async def note_in(self, conn: AsyncConnection, agent_id: str, note: str) -> AgentRecord:
        """Add `note` to the reason of the agent's current status and of the transition that made it,
        in the caller's transaction (registration: what the fabric cannot do for the agent)."""
        row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        reason = f"{row.status_reason}; {note}" if row.status_reason else note
        await conn.execute(update(agents).where(agents.c.id == agent_id).values(status_reason=reason))
        last = select(func.max(agent_transitions.c.seq)).where(agent_transitions.c.agent_id == agent_id)
        await conn.execute(
            update(agent_transitions)
            .where(agent_transitions.c.agent_id == agent_id, agent_transitions.c.seq == last.scalar_subquery())
            .values(reason=reason)
        )
        fresh = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        return record_from_row(fresh)

    async def nats_passwords(self) -> list[tuple[AgentRecord, str]]:
        """Every agent holding a NATS password for the bundled server (sealed as stored)."""
        stmt = select(agents).where(agents.c.nats_password.is_not(None), agents.c.tenant_id.is_not(None))
        async with self._engine.connect() as conn:
            return [(record_from_row(r), str(r.nats_password)) for r in await conn.execute(stmt)]

    async def update(
        self,
        agent_id: str,
        *,
        tenant_id: str | None,
        actor: str,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        expected_revision: int | None = None,
    ) -> AgentRecord:
        """Change what an operator may change on the record (description, labels)."""
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update())).first()
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise NotFound(f"no agent {agent_id!r}")
            if expected_revision is not None and expected_revision != row.revision:
                raise Conflict(
                    f"agent {agent_id!r} is at revision {row.revision}, not {expected_revision}",
                    code="version_conflict",
                    current_version=row.revision,
                )
            values: dict[str, Any] = {"updated_at": now, "revision": row.revision + 1}
            if description is not None:
                values["description"] = description
            if labels is not None:
                values["labels"] = labels
            await conn.execute(update(agents).where(agents.c.id == agent_id).values(**values))
            await append(
                conn,
                self._entry(
                    "agent.updated",
                    actor,
                    row.tenant_id,
                    agent_id,
                    request={"description": description, "labels": labels},
                ),
            )
            fresh = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        return record_from_row(fresh)

    async def delete(self, agent_id: str, *, tenant_id: str | None, actor: str) -> AgentRecord:
        """Remove an agent that is not running (409 otherwise: stop it first)."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update())).first()
            if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
                raise NotFound(f"no agent {agent_id!r}")
            record = record_from_row(row)
            if record.status not in DELETABLE:
                raise Conflict(
                    f"agent {agent_id!r} is {record.status.value}: stop it before deleting it",
                    code="agent_running",
                    agent_status=record.status.value,
                )
            await conn.execute(delete(agents).where(agents.c.id == agent_id, agents.c.status == record.status.value))
            await conn.execute(delete(agent_transitions).where(agent_transitions.c.agent_id == agent_id))
            await append(conn, self._entry("agent.deleted", actor, row.tenant_id, agent_id, request=record.view()))
        return record

    def _entry(self, action: str, actor: str, tenant_id: str | None, agent_id: str, request: Any = None) -> AuditEntry:
        return AuditEntry(
            action,
            actor,
            tenant_id,
            self._mode_for(tenant_id),
            request={"agent_id": agent_id, **(request or {})},
        )


def _package(manifest: Manifest) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "path": str(manifest.path)}

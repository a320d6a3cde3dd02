"""A POD's fleet: its orchestrator (Agent 0) and the specialists under it, as Agent Zero chats.

Agent Zero's own specialists are subordinates inside one chat (call_subordinate); what the fabric
can create from outside is a chat with a profile (api_message's `agent_profile`, new chats only).
So a fleet agent is one chat opened with its profile on one instance of the POD's set: the
orchestrator with the orchestrator profile, specialists with theirs, each child naming its parent.
The chat is opened with the priming message, so its context id is known as soon as it exists.

At most `max_agents` live agents per POD (the tenant's agent_zero.max_agents, else the setting).
The count and the reserving insert run under a per-POD lock (an asyncio lock in the process and,
on Postgres, a transaction advisory lock), so two spawns on two replicas cannot both take the last
place; the slow part, opening the chat, happens after the lock is released.

Terminating an agent marks it and its live descendants terminated under the same lock (so no
child can be spawned under it meanwhile, and a child still starting deletes its chat when it
finds itself terminated), then deletes their chats (api_terminate_chat). A chat that cannot be
deleted (instance down or gone) is noted in last_error and left to Agent Zero's own expiry
(lifetime_hours).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.agent_zero import fleet_rows as rows
from agent_fabric.agent_zero.client import AgentZeroError
from agent_fabric.agent_zero.fleet import Fleet, Instance
from agent_fabric.agent_zero.fleet_rows import AgentRecord
from agent_fabric.errors import Conflict, NotFound, RateLimited, ServiceUnavailable, UpstreamFailed
from agent_fabric.settings import AgentZeroSettings, Mode
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)


class FleetAgents:
    def __init__(self, engine: AsyncEngine, fleet: Fleet, cfg: AgentZeroSettings, tenants: TenantRegistry) -> None:
        self._engine = engine
        self._fleet = fleet
        self._cfg = cfg
        self._tenants = tenants
        self._lock = asyncio.Lock()  # SQLite has no advisory locks, and one process writes it

    def max_agents(self, tenant_id: str) -> int:
        configured = self._tenants.config_for(tenant_id).agent_zero.max_agents
        return configured if configured is not None else self._cfg.max_agents_per_pod

    async def live(self, tenant_id: str) -> list[AgentRecord]:
        async with self._engine.connect() as conn:
            return await rows.live_agents(conn, tenant_id)

    async def listing(self, tenant_id: str, *, include_terminated: bool, limit: int) -> list[AgentRecord]:
        async with self._engine.connect() as conn:
            if include_terminated:
                return await rows.all_agents(conn, tenant_id, limit)
            return (await rows.live_agents(conn, tenant_id))[:limit]

    async def get(self, tenant_id: str, agent_id: str) -> AgentRecord:
        async with self._engine.connect() as conn:
            record = await rows.get_agent(conn, tenant_id, agent_id)
        if record is None:  # another POD's agent reads as absent, not forbidden
            raise NotFound(f"no fleet agent {agent_id!r} in this POD", code="agent_not_found")
        return record

    async def start(self, tenant_id: str, mode: Mode, actor: str) -> tuple[AgentRecord, bool]:
        """The POD's orchestrator, created if it has none; True when this call created it."""
        async with self._pod(tenant_id) as conn:
            live = await rows.live_agents(conn, tenant_id)
            current = next((a for a in live if a.role == rows.ORCHESTRATOR), None)
            if current is not None:
                return current, False
            profile = self._cfg.orchestrator_profile
            record = await self._reserve(conn, tenant_id, live, mode, actor, rows.ORCHESTRATOR, profile, None)
        return await self._open_chat(record, profile), True

    async def spawn(self, tenant_id: str, mode: Mode, actor: str, profile: str, parent_id: str | None) -> AgentRecord:
        """A specialist under `parent_id` (default: the orchestrator); the fleet must be started."""
        async with self._pod(tenant_id) as conn:
            live = await rows.live_agents(conn, tenant_id)
            orchestrator = next((a for a in live if a.role == rows.ORCHESTRATOR), None)
            if orchestrator is None:
                raise Conflict("the POD's fleet is not started: POST /api/v2/agent/fleet/start", code="fleet_stopped")
            parent = orchestrator if parent_id is None else next((a for a in live if a.id == parent_id), None)
            if parent is None:
                if await rows.get_agent(conn, tenant_id, parent_id or "") is None:
                    raise NotFound(f"no fleet agent {parent_id!r} in this POD", code="agent_not_found")
                raise Conflict(f"the parent agent {parent_id!r} is terminated", code="parent_terminated")
            record = await self._reserve(conn, tenant_id, live, mode, actor, rows.SPECIALIST, profile, parent.id)
        return await self._open_chat(record, profile)

    async def terminate(self, tenant_id: str, agent_id: str) -> list[AgentRecord]:
        """The agent and its live descendants, then their chats. Already terminated: []."""
        async with self._pod(tenant_id) as conn:
            target = await rows.get_agent(conn, tenant_id, agent_id)
            if target is None:
                raise NotFound(f"no fleet agent {agent_id!r} in this POD", code="agent_not_found")
            if not target.live:
                return []
            family = descendants(target, await rows.live_agents(conn, tenant_id))
            ended = await rows.mark_terminated(conn, [a.id for a in family], datetime.now(UTC))
        return await self._delete_chats(ended)

    async def stop(self, tenant_id: str) -> list[AgentRecord]:
        """Every live agent of the POD, then their chats."""
        async with self._pod(tenant_id) as conn:
            live = await rows.live_agents(conn, tenant_id)
            ended = await rows.mark_terminated(conn, [a.id for a in live], datetime.now(UTC))
        return await self._delete_chats(ended)

    async def mark_lost(self, record: AgentRecord, reason: str) -> None:
        async with self._engine.begin() as conn:
            await rows.mark_lost(conn, record.id, reason)

    @contextlib.asynccontextmanager
    async def _pod(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        async with self._lock, self._engine.begin() as conn:
            await rows.lock_pod(conn, tenant_id)
            yield conn

    async def _reserve(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        live: list[AgentRecord],
        mode: Mode,
        actor: str,
        role: str,
        profile: str | None,
        parent_id: str | None,
    ) -> AgentRecord:
        if not self._fleet.serves(tenant_id):
            raise Conflict(
                "no Agent Zero instance serves this POD (set AGENT_FABRIC_AGENT_ZERO_URL or register one with "
                "POST /api/v2/agent/instances)",
                code="runtime_unavailable",
            )
        limit = self.max_agents(tenant_id)
        if len(live) >= limit:
            raise RateLimited(
                f"the POD has {len(live)} live agents, its limit is {limit}: terminate one first",
                code="max_agents",
                limit=limit,
            )
        now = datetime.now(UTC)
        record = AgentRecord(
            id=secrets.token_hex(8),
            tenant_id=tenant_id,
            role=role,
            profile=profile,
            parent_id=parent_id,
            instance_url=None,
            context_id=None,
            status=rows.STARTING,
            mode=mode,
            created_by=actor,
            created_at=now,
            last_activity_at=now,
            terminated_at=None,
            last_error=None,
        )
        await rows.insert_agent(conn, record)
        return record

    async def _open_chat(self, record: AgentRecord, profile: str | None) -> AgentRecord:
        try:
            instance, context_id = await self._prime(record, profile)
        except BaseException:
            async with self._engine.begin() as conn:
                await rows.drop_reservation(conn, record.id)
            raise
        async with self._engine.begin() as conn:
            opened = await rows.opened(conn, record.id, instance.url, context_id, datetime.now(UTC))
        if opened is None:  # terminated while its chat was being opened: the chat must not linger
            with contextlib.suppress(AgentZeroError):
                await instance.client.terminate_chat(context_id)
            raise Conflict(f"agent {record.id} was terminated while its chat was opened", code="agent_terminated")
        log.info("fleet agent started", extra={"tenant_id": record.tenant_id, "agent": record.id, "role": record.role})
        return opened

    async def _prime(self, record: AgentRecord, profile: str | None) -> tuple[Instance, str]:
        async with self._engine.connect() as conn:
            load = await rows.agents_per_instance(conn)
        try:
            instance = self._fleet.pick(record.tenant_id, also=load)
        except AgentZeroError as exc:
            raise ServiceUnavailable(exc.message, code=exc.code) from None
        try:
            # A request must not hang behind long tasks forever: wait at most one Agent Zero timeout.
            async with instance.slot(wait=self._cfg.timeout_seconds):
                context_id = await instance.client.open_chat(
                    agent_profile=profile, lifetime_hours=self._cfg.fleet_chat_lifetime_hours
                )
        except AgentZeroError as exc:
            if exc.code == "agent_busy":
                raise ServiceUnavailable(exc.message, code=exc.code) from None
            self._fleet.mark_failed(instance, exc)
            raise UpstreamFailed(f"Agent Zero at {instance.url} could not open the chat: {exc.message}") from None
        return instance, context_id

    async def _delete_chats(self, ended: list[AgentRecord]) -> list[AgentRecord]:
        """api_terminate_chat for each; a chat that could not be deleted is noted in last_error."""
        notes = dict(n for n in await asyncio.gather(*(self._delete_chat(a) for a in ended)) if n is not None)
        if notes:
            async with self._engine.begin() as conn:
                await rows.note(conn, notes)
        return [dataclasses.replace(a, last_error=notes.get(a.id, a.last_error)) for a in ended]

    async def _delete_chat(self, agent: AgentRecord) -> tuple[str, str] | None:
        """api_terminate_chat on the agent's chat; a note when the chat could not be deleted."""
        if agent.context_id is None or agent.instance_url is None:
            return None  # still starting: _open_chat deletes the chat it opens
        instance = self._fleet.by_url(agent.instance_url)
        if instance is None:
            return agent.id, f"chat {agent.context_id} left on {agent.instance_url}: the instance left the fleet"
        try:
            await instance.client.terminate_chat(agent.context_id)
        except AgentZeroError as exc:
            if exc.code == "agent_context_not_found":
                return None  # Agent Zero had already dropped it
            return agent.id, f"chat {agent.context_id} could not be deleted: {exc.message}"
        return None


def descendants(root: AgentRecord, live: list[AgentRecord]) -> list[AgentRecord]:
    """`root` and every live agent below it, parents before children."""
    family, frontier = [root], [root.id]
    while frontier:
        children = [a for a in live if a.parent_id in frontier and a not in family]
        family += children
        frontier = [a.id for a in children]
    return family

"""Which fleet agent's chat an agent-zero task runs in (seed 000 req. 1.1.7 and 1.2.2).

When the task's POD has a started fleet (a live orchestrator):
- a task with a profile (its own, else profile_routes[type]) runs in the chat of a live agent
  with that profile; among several, a free one, least recently used first. When all of them are
  busy the task waits for one (a specialist's chat is where that kind of work accumulates its
  context); when none has the profile it gets a fresh chat with its profile, as without a fleet
  (the orchestrator's chat runs the orchestrator profile and would ignore the one asked for);
- a task with no profile runs in the orchestrator's chat if it is free, else in a fresh chat.
Without a fleet every task gets a fresh chat. The fabric never spawns agents on its own: the
POD's administrator decides what the fleet holds (and max_agents bounds it).

Agent Zero takes one message per chat at a time, on every replica: a task claims the agent's row
with a conditional UPDATE (claimed_by = its job_id, claimed_until = now + fleet_claim_seconds),
renews the claim while it runs and releases it when the run ends however it ends. A replica
that dies leaves a claim that lapses by itself. A redelivered task takes its own claim again (the
same job) and continues in the same chat. Only agents that are idle in the table, on a healthy
instance of the POD's current set (LIVE or SANDBOX) are chosen: never a terminated or lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agent_zero import fleet_rows as rows
from agent_fabric.agent_zero.client import AgentZeroError
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_rows import AgentRecord
from agent_fabric.drivers.base import RunContext
from agent_fabric.settings import AgentZeroSettings

log = logging.getLogger(__name__)


class FleetRouter:
    def __init__(self, engine: AsyncEngine, fleet: Fleet, cfg: AgentZeroSettings) -> None:
        self._engine = engine
        self._fleet = fleet
        self._cfg = cfg

    async def acquire(
        self, ctx: RunContext, profile: str | None, resume: str | None, exclude: set[str]
    ) -> AgentRecord | None:
        """The agent whose chat the task runs in, claimed for it; None for a fresh chat.
        `resume`: the agent a previous attempt of the task ran in (it must continue there)."""
        spec, waiting = ctx.spec, False
        while True:
            async with self._engine.connect() as conn:
                live = await rows.live_agents(conn, spec.tenant_id)
            if resume is not None:
                # Its chat is where the task may already have run: it goes back there (to an
                # instance that is down too, as a resumed plain chat does), or fails.
                mine = next((a for a in live if a.id == resume), None)
                if mine is None or mine.status != rows.IDLE:
                    raise AgentZeroError(
                        "agent_context_lost",
                        f"the task's chat belongs to fleet agent {resume}, which is "
                        f"{'terminated' if mine is None else mine.status}",
                    )
                matching = [mine]
            else:
                matching = self._matching(live, spec.tenant_id, profile, exclude)
                if not matching:
                    return None
            now = datetime.now(UTC)
            free = sorted((a for a in matching if a.holder(now) in (None, spec.job_id)), key=_least_recent)
            for agent in free:
                claimed = await self._claim(agent.id, spec.job_id)
                if claimed is not None:
                    log.info("task routed to fleet agent", extra={"job_id": spec.job_id, "agent": agent.id})
                    return claimed
            if profile is None and resume is None:
                return None  # the orchestrator is busy: a task with no profile does not wait for it
            if not waiting:
                waiting = True
                await ctx.progress(
                    {"type": "fleet", "heading": "Waiting for a free fleet agent", "agents": [a.id for a in matching]}
                )
            await asyncio.sleep(self._cfg.poll_seconds)

    @contextlib.asynccontextmanager
    async def holding(self, agent: AgentRecord, job_id: str) -> AsyncIterator[None]:
        """Keep the claim renewed while the block runs; release it however the block ends."""
        renewer = asyncio.create_task(self._renew(agent.id, job_id), name=f"fleet-claim-{agent.id}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            # Shielded: a cancelled run must still free the agent (else it waits for the lapse).
            await asyncio.shield(self._release(agent.id, job_id))

    async def lost(self, agent: AgentRecord, reason: str) -> None:
        """Agent Zero no longer has the agent's chat: the agent is in error for good."""
        log.warning("fleet agent lost its chat", extra={"agent": agent.id, "error": reason})
        async with self._engine.begin() as conn:
            await rows.mark_lost(conn, agent.id, reason)

    def _matching(
        self, live: list[AgentRecord], tenant_id: str, profile: str | None, exclude: set[str]
    ) -> list[AgentRecord]:
        orchestrator = next((a for a in live if a.role == rows.ORCHESTRATOR), None)
        if orchestrator is None:
            return []  # no started fleet
        usable = [a for a in live if a.id not in exclude and self._usable(a, tenant_id)]
        if profile is None:
            return [a for a in usable if a.id == orchestrator.id]
        return [a for a in usable if a.profile == profile]

    def _usable(self, agent: AgentRecord, tenant_id: str) -> bool:
        if agent.status != rows.IDLE or agent.context_id is None or agent.instance_url is None:
            return False
        # Its instance must still serve the POD's current set: a POD switched to SANDBOX does not
        # run work in chats it opened on LIVE instances.
        return any(i.url == agent.instance_url and i.healthy for i in self._fleet.candidates(tenant_id))

    async def _claim(self, agent_id: str, job_id: str) -> AgentRecord | None:
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            return await rows.claim(conn, agent_id, job_id, now + self._lease(), now)

    async def _renew(self, agent_id: str, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._cfg.fleet_claim_seconds / 3)
            try:
                async with self._engine.begin() as conn:
                    held = await rows.renew_claim(conn, agent_id, job_id, datetime.now(UTC) + self._lease())
            except Exception as exc:  # the database away for a moment: the next round tries again
                log.warning("fleet claim renewal failed", extra={"agent": agent_id, "error": str(exc)})
                continue
            if not held:  # it lapsed (this process stalled past the lease) and another task took it
                log.warning("fleet claim lost", extra={"agent": agent_id, "job_id": job_id})
                return

    async def _release(self, agent_id: str, job_id: str) -> None:
        try:
            async with self._engine.begin() as conn:
                await rows.release_claim(conn, agent_id, job_id, datetime.now(UTC))
        except Exception as exc:  # the claim lapses by itself at claimed_until
            log.warning("fleet claim release failed", extra={"agent": agent_id, "error": str(exc)})

    def _lease(self) -> timedelta:
        return timedelta(seconds=self._cfg.fleet_claim_seconds)


def _least_recent(agent: AgentRecord) -> tuple[datetime, str]:
    return agent.last_activity_at, agent.id

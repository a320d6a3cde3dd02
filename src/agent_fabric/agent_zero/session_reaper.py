"""The end of Agent Zero sessions: manual terminate, the idle sweep, and the cleanup after both.

Every replica sweeps every AGENT_FABRIC_AGENT_ZERO_SESSION_SWEEP_SECONDS for sessions idle past
their POD's `session_idle_timeout_seconds`. Ending is a conditional UPDATE, so of two replicas
(or a sweep and a manual terminate) exactly one wins; the winner deletes the Agent Zero chat
(`api_terminate_chat`) and the session's event log, tells WebSocket watchers (a `terminated`
event) and writes `session_terminated` to the audit trail. The session row stays, terminated.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agent_zero.client import AgentZeroError
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.session_events import SessionEvents
from agent_fabric.audit.entries import AuditEntry
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.errors import Conflict
from agent_fabric.periodic import Periodic
from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage import session_store as store
from agent_fabric.storage.task_store import utcnow
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

SWEEP_BATCH = 1000
SYSTEM_ACTOR = "system"


class SessionReaper:
    def __init__(
        self,
        engine: AsyncEngine,
        events: SessionEvents,
        fleet: Fleet,
        tenants: TenantRegistry,
        audit: AuditWriter,
        cfg: AgentZeroSettings,
    ) -> None:
        self._engine = engine
        self._events = events
        self._fleet = fleet
        self._tenants = tenants
        self._audit = audit
        self._cfg = cfg
        # The next round retries a failed sweep; sessions only stay open a little longer.
        self._sweeper = Periodic("agent-session-sweep", cfg.session_sweep_seconds, self.sweep)

    def start(self) -> None:
        self._sweeper.start()

    async def aclose(self) -> None:
        """Stop the sweep. Idempotent."""
        await self._sweeper.stop()

    async def terminate(self, session_id: str, actor: str, reason: str = "manual") -> store.SessionRecord:
        """End the session now; 409 if it already ended."""
        async with self._engine.begin() as conn:
            ended = await store.terminate(conn, session_id, utcnow())
        if ended is None:
            raise Conflict(f"session {session_id!r} is already terminated", code="session_terminated")
        await self._clean_up(ended, actor, reason)
        return ended

    async def end_if_chatless(self, session_id: str, actor: str) -> None:
        """A session whose chat could not even be opened holds nothing: free its place in the POD."""
        current = await store.get(self._engine, session_id)
        if current is None or current.agent_zero_session_id is not None:
            return
        async with self._engine.begin() as conn:
            ended = await store.terminate(conn, session_id, utcnow())
        if ended is not None:
            await self._clean_up(ended, actor, "start_failed")

    async def sweep(self) -> int:
        """End every session idle past its POD's timeout; returns how many this replica ended."""
        now = utcnow()
        ended = 0
        for candidate in await store.idle_candidates(self._engine, now, SWEEP_BATCH):
            timeout = self._tenants.config_for(candidate.tenant_id).agent_zero.session_idle_timeout_seconds
            idle_before = now - timedelta(seconds=timeout)
            if candidate.last_activity_at >= idle_before:
                continue
            # A busy flag older than the longest Agent Zero call means its replica died mid-message.
            stale_before = now - timedelta(seconds=max(timeout, self._cfg.timeout_seconds + 60))
            async with self._engine.begin() as conn:
                won = await store.terminate(conn, candidate.id, now, idle_before=idle_before, stale_before=stale_before)
            if won is not None:
                await self._clean_up(won, SYSTEM_ACTOR, "idle")
                ended += 1
        return ended

    async def _clean_up(self, session: store.SessionRecord, actor: str, reason: str) -> None:
        """After the winning terminate: delete the chat in Agent Zero and the event log; tell watchers."""
        chat_error = await self._delete_chat(session)
        await store.delete_events(self._engine, session.id)
        ended = store.Event(session.last_seq + 1, "terminated", {"reason": reason, "by": actor}, utcnow())
        await self._events.publish(session.id, [ended])
        self._audit.record(
            AuditEntry(
                "session_terminated",
                actor,
                session.tenant_id,
                session.mode,
                request={"reason": reason},
                response={
                    "message_count": session.message_count,
                    "chat_deleted": chat_error is None,
                    "error": chat_error,
                },
                session_id=session.id,
                cost_usd=session.estimated_cost_usd,
            )
        )

    async def _delete_chat(self, session: store.SessionRecord) -> str | None:
        """Why the chat could not be deleted, or None."""
        if session.agent_zero_session_id is None or session.instance_url is None:
            return None
        instance = self._fleet.by_url(session.instance_url)
        if instance is None:
            return f"{session.instance_url} is no longer configured"
        try:
            await instance.client.terminate_chat(session.agent_zero_session_id)
        except AgentZeroError as exc:
            # Already gone there (expired, restarted without it) is the outcome we wanted.
            if exc.code != "agent_context_not_found":
                log.warning("Agent Zero chat not deleted", extra={"session_id": session.id, "error": exc.message})
                return exc.message
        return None

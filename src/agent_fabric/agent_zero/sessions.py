"""Agent Zero sessions of a POD (seed 000 req. 2, 3, 9): one Agent Zero chat each, tracked in the database.

- The first message without a session id opens a session, unless the POD already has its
  `agent_zero.max_sessions` open ones (429 `max_sessions`). The chat is created on the instance
  `fleet.pick(tenant)` chooses (SANDBOX PODs get the sandbox set) and stays there.
- Agent Zero's `api_message` blocks until the agent has finished and only then names a new chat,
  so a new chat is first opened with the driver's short priming message; the user's message then
  goes to a known chat whose log is polled for progress while it runs.
- One message per session at a time (409 `session_busy`): Agent Zero would merge a second one into
  the running loop and give both callers the same answer.
- A LIVE POD whose budget is used up is refused before anything is sent (402 `budget_exceeded`);
  each message is charged AGENT_FABRIC_AGENT_ZERO_COST_PER_MESSAGE_USD to the session and the POD.
- Ending a session (manual, or idle past the POD's timeout) is agent_zero/session_reaper.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.budget import BudgetManager
from agent_fabric.admission.budget_math import Amounts
from agent_fabric.agent_zero.client import AgentZeroError
from agent_fabric.agent_zero.fleet import Fleet, Instance
from agent_fabric.agent_zero.log_follower import LogFollower
from agent_fabric.agent_zero.session_events import RunLog, SessionEvents
from agent_fabric.agent_zero.session_reaper import SessionReaper
from agent_fabric.audit.entries import Caller
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.errors import BudgetExceeded, Conflict, FabricError, NotFound, RateLimited
from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage import session_store as store
from agent_fabric.storage.task_store import utcnow
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

BUDGET_AGENT = "agent-zero"  # the budget entity sessions are charged to, besides the tenant
# api_message on Agent Zero's status codes: what the caller of /api/v2/agent/message sees.
UPSTREAM_STATUS = {"agent_unreachable": 503, "timeout": 504, "runtime_unavailable": 409}


@dataclass(frozen=True, slots=True)
class Answer:
    session: store.SessionRecord
    response: str
    started: bool


@dataclass(frozen=True, slots=True)
class Asked:
    """Where Agent Zero answered, what, and the last log item its chat had then."""

    instance_url: str
    context_id: str
    response: str
    log_floor: int


def upstream_problem(exc: AgentZeroError) -> FabricError:
    problem = FabricError(f"Agent Zero: {exc.message}", code=exc.code)
    problem.status = UPSTREAM_STATUS.get(exc.code, 502)
    problem.title = "Agent Zero failed"
    return problem


class SessionManager:
    def __init__(
        self,
        engine: AsyncEngine,
        events: SessionEvents,
        fleet: Fleet,
        tenants: TenantRegistry,
        budgets: BudgetManager,
        audit: AuditWriter,
        cfg: AgentZeroSettings,
    ) -> None:
        self._engine = engine
        self.events = events
        self._fleet = fleet
        self._tenants = tenants
        self._budgets = budgets
        self._audit = audit
        self._cfg = cfg
        self.reaper = SessionReaper(engine, events, fleet, tenants, audit, cfg)

    def start(self) -> None:
        self.reaper.start()

    async def aclose(self) -> None:
        """Stop the idle sweep. Idempotent; messages in flight belong to their HTTP requests."""
        await self.reaper.aclose()

    # -- reads --

    async def get(self, tenant_id: str, session_id: str) -> store.SessionRecord:
        """The session, or 404 (also for another POD's session: its existence is not disclosed)."""
        session = await store.get(self._engine, session_id)
        if session is None or session.tenant_id != tenant_id:
            raise NotFound(f"no Agent Zero session {session_id!r} in this POD", code="session_not_found")
        return session

    async def page(
        self, tenant_id: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[store.SessionRecord], int]:
        return await store.page(self._engine, tenant_id, status, limit, offset)

    # -- a message --

    async def send(
        self, caller: Caller, message: str, session_id: str | None = None, agent_profile: str | None = None
    ) -> Answer:
        """Send one message into the session (a new one without `session_id`) and wait for the answer."""
        await self._check_budget(caller)
        if session_id is None:
            self._require_instances(caller)
            session, run = await self._open(caller, message, agent_profile)
        else:
            session, run = await self._take(caller, session_id, message)
        self._record(caller, "message_sent", session.id, request={"message": message, "seq": run.seq})
        try:
            asked = await self._ask(session, run, message)
        except AgentZeroError as exc:
            still_open = await run.finish(
                "error", {"code": exc.code, "message": exc.message}, store.failed(exc.message)
            )
            self._record(caller, "message_failed", session.id, response={"code": exc.code, "message": exc.message})
            if not still_open:  # terminated while it answered: that is why Agent Zero's run stopped
                raise Conflict(f"session {session.id!r} was terminated", code="session_terminated") from None
            await self.reaper.end_if_chatless(session.id, caller.actor)
            raise upstream_problem(exc) from None
        except BaseException as exc:
            # Cancelled (the request went away) or a fault of ours: free the session for the next message.
            code = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
            await asyncio.shield(run.finish("error", {"code": code, "message": code}, store.failed(code)))
            raise
        cost = self._cfg.cost_per_message_usd
        values = store.answered(asked.context_id, asked.instance_url, cost, asked.log_floor)
        finishing = run.finish("response", {"response": asked.response}, values)
        if cost > 0:
            # The session's totals and the POD's ledger are separate writes: side by side.
            charging = self._budgets.track(caller.tenant_id, BUDGET_AGENT, Amounts(cost_usd=cost), user=caller.actor)
            await asyncio.gather(finishing, charging)
        else:
            await finishing
        self._record(caller, "response_received", session.id, response={"response": asked.response}, cost_usd=cost)
        done = dataclasses.replace(
            session,
            agent_zero_session_id=asked.context_id,
            instance_url=asked.instance_url,
            log_floor=asked.log_floor,
            status=store.IDLE,
            busy=False,
            message_count=session.message_count + 1,
            estimated_cost_usd=session.estimated_cost_usd + cost,
            last_seq=run.seq,
            last_activity_at=utcnow(),
            last_error=None,
        )
        return Answer(done, asked.response, started=session_id is None)

    async def _check_budget(self, caller: Caller) -> None:
        # SANDBOX PODs are tracked, never refused (seed 000 req. 7.3).
        if caller.mode != "LIVE":
            return
        estimate = Amounts(cost_usd=self._cfg.cost_per_message_usd)
        if await self._budgets.check_budget(caller.tenant_id, BUDGET_AGENT, estimate, user=caller.actor):
            return
        self._record(caller, "budget_exceeded", None, request={"estimate_usd": estimate.cost_usd})
        refusal = BudgetExceeded(
            f"the budget of POD {caller.tenant_id!r} has no room for another Agent Zero message",
            tenant_id=caller.tenant_id,
        )
        refusal.status = self._budgets.refusal_status  # BUDGET_HTTP_STATUS, like task admission
        raise refusal

    async def open(self, caller: Caller, agent_profile: str | None = None) -> store.SessionRecord:
        """A session without a message yet (its chat opens with the first one): a WebSocket client
        opens one, connects, and sees its first answer stream in."""
        self._require_instances(caller)
        return await self._create(caller, agent_profile, busy=False)

    async def _open(
        self, caller: Caller, message: str, agent_profile: str | None
    ) -> tuple[store.SessionRecord, RunLog]:
        session = await self._create(caller, agent_profile, busy=True)
        run = self.events.run_log(session.id, 0)
        run.add("message", {"message": message, "user_id": caller.actor})
        return session, run

    async def _create(self, caller: Caller, agent_profile: str | None, *, busy: bool) -> store.SessionRecord:
        now = utcnow()
        session = store.SessionRecord(
            id=str(uuid.uuid4()),
            tenant_id=caller.tenant_id,
            user_id=caller.actor,
            agent_zero_session_id=None,
            instance_url=None,
            agent_profile=agent_profile,
            status=store.ACTIVE if busy else store.IDLE,
            mode=caller.mode,
            started_at=now,
            last_activity_at=now,
            terminated_at=None,
            estimated_cost_usd=0.0,
            message_count=0,
            busy=busy,
            last_error=None,
            last_seq=0,
            log_floor=-1,
        )
        limit = self._tenants.config_for(caller.tenant_id).agent_zero.max_sessions
        async with self._engine.begin() as conn:
            created = await store.create(conn, dataclasses.asdict(session), limit)
        if not created:
            raise RateLimited(
                f"POD {caller.tenant_id!r} already has {limit} open Agent Zero sessions; terminate one first",
                code="max_sessions",
            )
        self._record(caller, "session_started", session.id, request={"agent_profile": agent_profile})
        return session

    async def _take(self, caller: Caller, session_id: str, message: str) -> tuple[store.SessionRecord, RunLog]:
        said = {"message": message, "user_id": caller.actor}
        taken = await store.acquire(self._engine, caller.tenant_id, session_id, caller.mode, said, utcnow())
        if taken is None:
            current = await self.get(caller.tenant_id, session_id)
            if current.status == store.TERMINATED:
                raise Conflict(f"session {session_id!r} was terminated", code="session_terminated")
            if current.mode != caller.mode:
                # Its chat lives on the other mode's instances: a LIVE POD never talks to a sandbox chat.
                raise Conflict(
                    f"session {session_id!r} was opened in {current.mode} mode and the POD is now {caller.mode}; "
                    "open a new session",
                    code="session_mode_changed",
                )
            raise Conflict(
                f"session {session_id!r} is still answering a message; send the next one after it", code="session_busy"
            )
        session, event = taken
        await self.events.publish(session_id, [event])
        return session, self.events.run_log(session_id, session.last_seq)

    async def _ask(self, session: store.SessionRecord, run: RunLog, message: str) -> Asked:
        instance = self._instance_of(session)
        client = instance.client
        lifetime = self._tenants.config_for(session.tenant_id).agent_zero.session_idle_timeout_seconds / 3600 + 1
        async with instance.slot():
            try:
                context_id = session.agent_zero_session_id
                if context_id is None:
                    context_id = await client.open_chat(agent_profile=session.agent_profile, lifetime_hours=lifetime)
                    # Known at once, so a terminate during the first answer deletes the chat too.
                    async with self._engine.begin() as conn:
                        await store.place(conn, session.id, context_id, instance.url)
                follower = LogFollower(
                    client, context_id, run, message, self._cfg.poll_seconds, floor=session.log_floor
                )
                # The reply carries the answer; a last log read after it would put the whole chat's
                # log (Agent Zero returns all of it) on every answer's path for the items of the
                # run's last poll interval.
                answer = await follower.alongside(
                    client.message(message, context_id=context_id, lifetime_hours=lifetime), read_after_answer=False
                )
            except AgentZeroError as exc:
                self._fleet.mark_failed(instance, exc)
                raise
        return Asked(instance.url, context_id, answer, follower.last_no)

    def _require_instances(self, caller: Caller) -> None:
        """A new session needs an instance to live on: a POD without any is told so (not a 5xx)."""
        if not self._fleet.serves(caller.tenant_id):
            raise Conflict(
                "no Agent Zero instance serves this POD (set AGENT_FABRIC_AGENT_ZERO_URL or register one with "
                "POST /api/v2/agent/instances)",
                code="runtime_unavailable",
            )

    def _instance_of(self, session: store.SessionRecord) -> Instance:
        if session.instance_url is None:
            return self._fleet.pick(session.tenant_id)
        return self._fleet.home_of(session.instance_url)

    # -- the end of a session --

    async def terminate(self, caller: Caller, session_id: str) -> store.SessionRecord:
        """End the session now (409 if it already ended)."""
        await self.get(caller.tenant_id, session_id)
        return await self.reaper.terminate(session_id, caller.actor)

    def _record(
        self,
        caller: Caller,
        action: str,
        session_id: str | None,
        *,
        request: Any = None,
        response: Any = None,
        cost_usd: float | None = None,
    ) -> None:
        self._audit.record(
            caller.entry(action, request=request, response=response, session_id=session_id, cost_usd=cost_usd)
        )

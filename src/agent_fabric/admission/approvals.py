"""Approval gates (FR-POL-2): park a task until named approvers decide, then run it or fail it.

The flow, each step one transaction that also writes its audit entry and outbox events:
- hold: the task is recorded as `awaiting_approval` with a pending approval, the request event
  goes to the outbox (agent.approvals.requested); only then is the JetStream message acked.
- approve: pending -> approved (a conditional UPDATE: exactly one decision wins); the task goes
  back to `queued` and its CloudEvent to the outbox for agent.execute.<priority>, so any replica
  runs it through the usual claim -> drive -> outcome -> publish -> ack.
- reject (a reason is required) / expiry (any replica's sweeper): the task ends `rejected` with
  code `rejected` / `approval_expired`; its failure result goes out through the outbox.
Nothing lives only in memory, so a restart loses no waiting task, request or decision.
Listeners (the decision records of admission/decisions.py) write in the hold's and the decision's
transactions, so their records commit or roll back with the approval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.admission import approval_events as events
from agent_fabric.admission.policy_model import Action, Effect, PolicyContext, PolicyDecision
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Conflict, Forbidden, InvalidRequest, NotFound
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.periodic import Periodic, until_short
from agent_fabric.security.tokens import Principal
from agent_fabric.settings import ApprovalSettings
from agent_fabric.storage import approval_store as store
from agent_fabric.storage.approval_store import ApprovalReader, ApprovalRecord
from agent_fabric.storage.outbox import OutboxMessage, enqueue
from agent_fabric.storage.task_store import FinishHook, spec_hash, utcnow
from agent_fabric.storage.task_transitions import end_unstarted, park, release_for_run
from agent_fabric.tasks import TaskStatus
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Hold:
    """What to do with a delivery that needs approval."""

    outcome: Literal["parked", "approved", "settled", "proceed"]
    approval: ApprovalRecord | None
    created: bool = False


class ApprovalListener(Protocol):
    """Follows approvals of tasks in the transactions that change them (admission/decisions.py
    keeps the decision records), so what it writes commits or rolls back with the approval."""

    async def parked(
        self, conn: AsyncConnection, record: ApprovalRecord, decision: PolicyDecision, event: TaskEvent
    ) -> None: ...

    async def decided(self, conn: AsyncConnection, record: ApprovalRecord) -> None: ...


# Runs in the transaction that decides an approval through decide(), after the decision.
AlsoOnDecide = Callable[[AsyncConnection, ApprovalRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ApprovalResult:
    approval_id: str
    status: str
    approved: bool
    decided_by: str | None
    reason: str | None


_OUTCOMES: dict[str, Literal["parked", "approved", "settled"]] = {
    store.PENDING: "parked",
    store.APPROVED: "approved",
    store.REJECTED: "settled",
    store.EXPIRED: "settled",
}


class ApprovalDesk:
    def __init__(
        self,
        engine: AsyncEngine,
        cfg: ApprovalSettings,
        tenants: TenantRegistry,
        metrics: FabricMetrics,
        finish_hooks: Sequence[FinishHook] = (),
        listeners: Sequence[ApprovalListener] = (),
    ) -> None:
        self._engine = engine
        self._cfg = cfg
        self._tenants = tenants
        self._metrics = metrics
        self._finish_hooks = finish_hooks
        self._listeners = listeners
        self.reader = ApprovalReader(engine)
        self._sweeper = Periodic("approval-sweep", cfg.sweep_seconds, until_short(self.sweep, SWEEP_BATCH))

    def _ttl(self, seconds: float | None) -> timedelta:
        return timedelta(seconds=min(seconds or self._cfg.default_ttl_seconds, self._cfg.max_ttl_seconds))

    async def hold(self, event: TaskEvent, decision: PolicyDecision, requester: str) -> Hold:
        """Park the task behind an approval, or say what its existing approval decided."""
        spec = event.spec
        for attempt in range(2):
            try:
                async with self._engine.begin() as conn:
                    existing = await store.approval_for_job(conn, spec.tenant_id, spec.job_id)
                    if existing is not None:
                        return Hold(_OUTCOMES[existing.status], existing)
                    record = events.new_record(
                        spec.tenant_id, decision, requester, self._ttl(decision.approval_ttl_seconds), task=event
                    )
                    if not await park(conn, spec, spec_hash(spec), event.id, record.id, record.requested_at):
                        return Hold("proceed", None)
                    await self._open(conn, record)
                    for listener in self._listeners:
                        await listener.parked(conn, record, decision, event)
            except IntegrityError:  # another replica parked it a moment ago: read theirs
                if attempt:
                    raise
                continue
            self._opened()
            return Hold("parked", record, created=True)
        raise AssertionError("unreachable")

    async def request(
        self, action: Action, ctx: PolicyContext, approvers: list[str], ttl_seconds: float | None, requester: str
    ) -> ApprovalRecord:
        """An approval for any action (tool use, a file, a URL, a command); agents poll or wait()."""
        decision = PolicyDecision(Effect.REQUIRE_APPROVAL, action.name, approvers=tuple(approvers))
        record = events.new_record(ctx.tenant_id, decision, requester, self._ttl(ttl_seconds), ctx)
        async with self._engine.begin() as conn:
            await self._open(conn, record)
        self._opened()
        return record

    async def _open(self, conn: AsyncConnection, record: ApprovalRecord) -> None:
        await store.insert_approval(conn, events.row(record))
        await enqueue(conn, events.requested(record))
        await append(
            conn,
            AuditEntry(
                "approval.requested",
                record.requested_by or "unknown",
                record.tenant_id,
                self._tenants.mode_for(record.tenant_id),
                request={"action": record.action, "job_id": record.job_id, "policy_id": record.policy_id},
                response={"approval_id": record.id, "approvers": record.approvers, "expires_at": record.expires_at},
            ),
        )

    def _opened(self) -> None:
        self._metrics.approvals.labels("requested").inc()

    async def decide(
        self,
        approval_id: str,
        *,
        approve: bool,
        principal: Principal,
        reason: str | None,
        also: AlsoOnDecide | None = None,
    ) -> ApprovalRecord:
        record = await self.reader.get(approval_id)
        if record is None or (principal.tenant_id is not None and principal.tenant_id != record.tenant_id):
            raise NotFound(f"no approval {approval_id!r}")
        if record.status != store.PENDING:
            raise Conflict(f"approval {approval_id} is already {record.status}", code="approval_not_pending")
        _authorize(record, principal)
        reason = (reason or "").strip() or None
        if not approve and reason is None:
            raise InvalidRequest("a rejection needs a reason", code="reason_required")
        status = store.APPROVED if approve else store.REJECTED
        now = utcnow()
        async with self._engine.begin() as conn:
            decided = await store.decide_pending(conn, approval_id, status, principal.subject, reason, now)
            if decided is not None:
                await self._follow_up(conn, decided, principal.subject)
                if also is not None:
                    await also(conn, decided)
        if decided is None:
            current = await self.reader.get(approval_id)
            if current is not None and current.status == store.PENDING:
                raise Conflict(f"approval {approval_id} expired at {current.expires_at}", code="approval_expired")
            raise Conflict(f"approval {approval_id} was decided meanwhile", code="approval_not_pending")
        self._metrics.approvals.labels(status).inc()
        return decided

    async def withdraw(self, conn: AsyncConnection, tenant_id: str, job_id: str, actor: str, reason: str) -> bool:
        """In the transaction that cancelled a waiting task: its pending approval ends `rejected`
        by the canceller with `reason`, announced and audited like any rejection, so nobody can
        approve it later. Call it after the task left awaiting_approval (its conclusion is then
        a no-op). Call withdrawn() after the commit when this returned True."""
        pending = await store.approval_for_job(conn, tenant_id, job_id)
        if pending is None or pending.status != store.PENDING:
            return False
        decided = await store.decide_pending(conn, pending.id, store.REJECTED, actor, reason, utcnow())
        if decided is None:  # overdue: the sweeper expires it, and finds the task already ended
            return False
        await self._follow_up(conn, decided, actor)
        return True

    def withdrawn(self) -> None:
        """After the commit of a withdraw() that returned True."""
        self._metrics.approvals.labels(store.REJECTED).inc()

    async def _follow_up(self, conn: AsyncConnection, decided: ApprovalRecord, actor: str) -> None:
        """In the deciding transaction: move the task on, announce, audit."""
        messages: list[OutboxMessage] = [events.decided(decided)]
        for listener in self._listeners:
            await listener.decided(conn, decided)
        if decided.job_id is not None and decided.status == store.APPROVED:
            if await release_for_run(conn, decided.tenant_id, decided.job_id, utcnow()) and decided.event:
                messages.append(events.requeue(decided))
        elif decided.job_id is not None:
            code = "rejected" if decided.status == store.REJECTED else "approval_expired"
            message = (
                f"rejected by {decided.decided_by}: {decided.reason}"
                if decided.status == store.REJECTED
                else f"approval {decided.id} expired at {decided.expires_at.isoformat()} without a decision"
            )
            task = await end_unstarted(
                conn,
                decided.tenant_id,
                decided.job_id,
                from_statuses=(TaskStatus.AWAITING_APPROVAL.value,),
                status=TaskStatus.REJECTED,
                code=code,
                message=message,
                now=utcnow(),
            )
            if task is not None:
                messages.append(events.result(task))
                for hook in self._finish_hooks:
                    await hook(conn, [task])
        await enqueue(conn, *messages)
        await append(
            conn,
            AuditEntry(
                f"approval.{decided.status}",
                actor,
                decided.tenant_id,
                self._tenants.mode_for(decided.tenant_id),
                request={"approval_id": decided.id, "reason": decided.reason},
                response={"status": decided.status, "job_id": decided.job_id, "action": decided.action},
            ),
        )

    async def sweep(self) -> int:
        """Expire overdue approvals (any replica may run this; each expiry happens once)."""
        async with self._engine.begin() as conn:
            expired = await store.expire_due(conn, utcnow(), SWEEP_BATCH)
            for record in expired:
                await self._follow_up(conn, record, "system")
        if expired:
            self._metrics.approvals.labels(store.EXPIRED).inc(len(expired))
        return len(expired)

    async def wait(self, approval_id: str, within: float) -> ApprovalResult:
        """Poll until the approval is decided or `within` seconds pass (then it is still pending)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = 0.1
        while True:
            record = await self.reader.get(approval_id)
            if record is None:
                raise NotFound(f"no approval {approval_id!r}")
            if record.status != store.PENDING or loop.time() >= deadline:
                return ApprovalResult(
                    record.id, record.status, record.status == store.APPROVED, record.decided_by, record.reason
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 1.0)

    def start(self) -> None:
        self._sweeper.start()

    async def shutdown(self) -> None:
        await self._sweeper.stop()


def _authorize(record: ApprovalRecord, principal: Principal) -> None:
    """Named approvers only (a subject, or role:<role>); never the requester (four eyes)."""
    if record.requested_by is not None and principal.subject == record.requested_by:
        raise Forbidden("the requester of an approval cannot decide it", code="self_approval")
    if record.approvers and not ({principal.subject, f"role:{principal.role}"} & set(record.approvers)):
        raise Forbidden(f"only {', '.join(record.approvers)} may decide approval {record.id}", code="not_an_approver")

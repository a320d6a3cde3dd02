"""Cancelling a task from any replica (POST /api/v1/tasks/{job_id}/cancel, AgentScheduler.cancel).

- Not started (queued, waiting, awaiting_approval): one transaction ends it `cancelled` (a
  conditional UPDATE, so exactly once), logs its state and end events, puts its result on
  agent.status.cancelled into the outbox, rejects its pending approval in the canceller's name,
  audits, and runs the TaskStore's finish hooks (the budget reservation is released there). Its
  JetStream message, whenever a replica fetches it, finds a finished task whose result is out:
  the claim refuses it and the runner acks it, so it never starts.
- Running: the row is marked (`cancel_requested_at`, with the message it will end with) and
  {tenant_id, job_id, message} goes out on agent.control.cancel (NATS core). The replica running
  it cancels the driver; the runner ends the task `cancelled` through its usual outcome path, so
  the result is published once and the message acked.
- A missed broadcast: the lease renewal every ack_wait/3 seconds (10 s by default) returns the
  marks of the tasks the replica runs, so a running task stops within that bound anyway.
- Its owner died: the next claim (once the lease lapsed) sees the mark and ends the task
  `cancelled` without running the driver.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.admission import approval_events as events
from agent_fabric.admission.approvals import ApprovalDesk
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.scheduling.runner import TaskRunner
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel
from agent_fabric.storage import cancel_store
from agent_fabric.storage.outbox import enqueue
from agent_fabric.storage.task_store import TaskStore, utcnow
from agent_fabric.storage.task_transitions import current_task
from agent_fabric.tasks import TaskStatus
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)

CancelOutcome = Literal[
    "cancelled",  # it had not started: it is cancelled now
    "cancel_requested",  # it is running: its driver is being stopped
    "already_cancelled",
    "already_requested",  # running, and someone asked before
    "finished",  # it ended otherwise first (completed, failed, ...)
    "not_found",
]
ACCEPTED: frozenset[CancelOutcome] = frozenset(
    {"cancelled", "cancel_requested", "already_cancelled", "already_requested"}
)


@dataclass(frozen=True, slots=True)
class CancelResult:
    outcome: CancelOutcome
    tenant_id: str
    job_id: str
    status: TaskStatus | None  # the task's status as this call left it (None: no such task)

    @property
    def accepted(self) -> bool:
        """The task is cancelled or on its way there (what AgentScheduler.cancel returns)."""
        return self.outcome in ACCEPTED


def cancel_message(actor: str, reason: str | None) -> str:
    return f"cancelled by {actor}: {reason}" if reason else f"cancelled by {actor}"


class Canceller:
    def __init__(
        self,
        engine: AsyncEngine,
        nc: NatsClient,
        store: TaskStore,
        runner: TaskRunner,
        approvals: ApprovalDesk,
        tenants: TenantRegistry,
        seal: InternalSeal,
        on_running_cancel: Callable[[str, str], Awaitable[Any]] | None = None,
    ) -> None:
        self._channel = ReplicaChannel(nc, seal)  # a broadcast stops a running task: only a replica may send one
        self._on_running_cancel = on_running_cancel
        self._engine = engine
        self._store = store
        self._runner = runner
        self._approvals = approvals
        self._tenants = tenants
        self._sub: Any = None

    async def cancel(self, tenant_id: str, job_id: str, actor: str, reason: str | None = None) -> CancelResult:
        """Cancel the task wherever it stands; idempotent (see CancelOutcome)."""
        message = cancel_message(actor, reason)
        now = utcnow()
        withdrawn = False
        async with self._engine.begin() as conn:
            ended = await cancel_store.cancel_not_started(conn, tenant_id, job_id, message, now)
            if ended is not None:
                await enqueue(conn, events.result(ended))
                withdrawn = await self._approvals.withdraw(conn, tenant_id, job_id, actor, message)
                for hook in self._store.finish_hooks:
                    await hook(conn, [ended])
                result = CancelResult("cancelled", tenant_id, job_id, TaskStatus.CANCELLED)
            elif await cancel_store.mark_running(conn, tenant_id, job_id, message, now):
                result = CancelResult("cancel_requested", tenant_id, job_id, TaskStatus.RUNNING)
            else:
                return await self._as_it_stands(conn, tenant_id, job_id)
            await append(
                conn,
                AuditEntry(
                    "task.cancel",
                    actor,
                    tenant_id,
                    self._tenants.mode_for(tenant_id),
                    request={"job_id": job_id, "reason": reason},
                    response={"outcome": result.outcome, "status": str(result.status)},
                ),
            )
        if ended is not None:
            if withdrawn:
                self._approvals.withdrawn()
        else:
            await self._stop_running(tenant_id, job_id, message)
        return result

    async def _as_it_stands(self, conn: Any, tenant_id: str, job_id: str) -> CancelResult:
        """Neither waiting nor newly marked: say why (and repeat a running task's broadcast)."""
        record = await current_task(conn, tenant_id, job_id)
        if record is None:
            return CancelResult("not_found", tenant_id, job_id, None)
        if record.status == TaskStatus.CANCELLED:
            return CancelResult("already_cancelled", tenant_id, job_id, record.status)
        if record.status.is_terminal:
            return CancelResult("finished", tenant_id, job_id, record.status)
        # Running and marked before: the first broadcast may have been lost, so send it again.
        await self._stop_running(tenant_id, job_id, record.error_message or "cancelled")
        return CancelResult("already_requested", tenant_id, job_id, record.status)

    async def _stop_running(self, tenant_id: str, job_id: str, message: str) -> None:
        if self._on_running_cancel is not None:  # its LLM gateway keys stop working now, not when it ends
            try:
                await self._on_running_cancel(tenant_id, job_id)
            except Exception as exc:
                log.warning("running-cancel hook failed", extra={"job_id": job_id, "error": str(exc)})
        # Held here: stop it now. Broadcast anyway: a replica that took the task over from this
        # one (its lease lapsed during a stall) may be the one really running it.
        self._runner.cancel_local(tenant_id, job_id, message)
        body = orjson.dumps({"tenant_id": tenant_id, "job_id": job_id, "message": message})
        try:
            await self._channel.publish(names.CANCEL_SUBJECT, body, flush=True)
        except Exception as exc:  # the mark is in the database: the owner's next lease renewal finds it
            log.warning("cancel broadcast failed", extra={"job_id": job_id, "error": str(exc)})

    # -- every replica: act on broadcasts for the tasks it runs --

    async def start(self) -> None:
        self._sub = await self._channel.subscribe(names.CANCEL_SUBJECT, self._on_broadcast, what="cancel")

    async def shutdown(self) -> None:
        """Stop listening (idempotent)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_broadcast(self, msg: Any) -> None:
        try:
            body = orjson.loads(msg.data)
            tenant_id, job_id = str(body["tenant_id"]), str(body["job_id"])
            message = str(body.get("message") or "cancelled")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("unreadable cancel broadcast", extra={"error": str(exc)})
            return
        if self._runner.cancel_local(tenant_id, job_id, message):
            log.info("cancelling a running task", extra={"job_id": job_id, "tenant_id": tenant_id})

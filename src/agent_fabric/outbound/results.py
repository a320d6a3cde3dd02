"""Result, transition and dead-letter CloudEvents on NATS.

Results go through JetStream (stream AGENT_STATUS) and wait for the server's ack, so a result
is durable before the task message is acked. Their CloudEvent id is fixed per job and outcome,
so a result re-published after a crash is dropped by the stream's duplicate window and is
recognisable to any subscriber as the same event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext

from agent_fabric import names
from agent_fabric.events.envelope import fabric_event
from agent_fabric.outbound.result_lookup import result_stored
from agent_fabric.outbound.stream_acks import StreamAcks
from agent_fabric.storage.task_store import TaskRecord
from agent_fabric.tasks import TaskStatus
from agent_fabric.telemetry.log_context import bound

log = logging.getLogger(__name__)

# Terminal statuses that are failures travel on agent.status.failed (with data.status saying
# which); cancellation has its own subject.
_RESULT_SUBJECT_STATUS = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.CANCELLED: "cancelled",
}


ACK_POLL_SECONDS = 0.2
ACK_PATIENCE_SECONDS = 5.0


def result_subject_status(status: TaskStatus) -> str:
    return _RESULT_SUBJECT_STATUS.get(status, "failed")


def result_event_id(tenant_id: str, job_id: str) -> str:
    return f"{tenant_id}/{job_id}/result"


def result_data(record: TaskRecord) -> dict[str, Any]:
    usage = record.usage or {}
    data: dict[str, Any] = {
        "job_id": record.job_id,
        "tenant_id": record.tenant_id,
        "status": record.status.value,
        "attempts": record.attempts,
        "usage": {
            "tokens": usage.get("tokens", 0),
            "compute_seconds": usage.get("compute_seconds", 0.0),
            "cost_usd": usage.get("cost_usd", 0.0),
        },
        # Datetimes as they are: fabric_event writes them in RFC 3339 with "Z".
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }
    if record.status == TaskStatus.COMPLETED:
        data["result"] = record.result
    else:
        data["error"] = {"code": record.error_code or "failed", "message": record.error_message or ""}
    return data


def result_event(record: TaskRecord, trace: Mapping[str, str] | None = None) -> tuple[str, bytes, str]:
    """(subject, CloudEvent JSON, event id) for a finished task; `trace`: the run span's context."""
    status = result_subject_status(record.status)
    event_id = result_event_id(record.tenant_id, record.job_id)
    body = fabric_event(
        names.status_event_type(status), result_data(record), subject=record.job_id, event_id=event_id, extensions=trace
    )
    return names.status_subject(status), body, event_id


@dataclass(slots=True)
class _AckWait:
    event_id: str
    unanswered: float = 0.0
    given_up: BaseException | None = None  # why the watchdog cancelled the ack


class ResultPublisher:
    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._acks = StreamAcks(nc)
        # Results waiting for their stream ack, watched by one task for all of them (see _acked).
        self._waiting: dict[asyncio.Future[int], _AckWait] = {}
        self._watchdog: asyncio.Task[None] | None = None

    async def publish_result(
        self, record: TaskRecord, trace: Mapping[str, str] | None = None, *, again: bool = False
    ) -> None:
        """Publish the result and wait for the stream's ack. `again`: an earlier publish of it may
        have landed (a retry, or a task found finished by another delivery), so look in the stream
        first and publish only if it is not there: every publish reaches core subscribers."""
        subject, body, event_id = result_event(record, trace)
        if again and await result_stored(self._js, subject, event_id, record.finished_at):
            return
        ack = await self._acks.publish(subject, body, {names.MSG_ID_HEADER: event_id})
        await self._acked(ack, event_id)
        if log.isEnabledFor(logging.DEBUG):
            with bound(job_id=record.job_id, tenant_id=record.tenant_id):
                log.debug("result published", extra={"subject": subject, "status": record.status.value})

    async def _acked(self, ack: asyncio.Future[int], event_id: str) -> None:
        """Wait for the stream's ack. While the client is reconnecting the message waits in its
        buffer and goes out on reconnect, so that time does not count: a retry then would be a
        second copy. Only connected and unanswered for ACK_PATIENCE_SECONDS (counted in steps of
        ACK_POLL_SECONDS) is it given up. One watchdog task checks every waiting result each
        step, and each waiter awaits its ack alone: a timed wait per result cost a waiter future
        and a timer for every task."""
        if not ack.done():
            wait = self._waiting[ack] = _AckWait(event_id)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch_acks(), name="result-ack-watchdog")
            try:
                await ack
            except asyncio.CancelledError:
                if wait.given_up is not None:
                    raise wait.given_up from None
                raise
            finally:
                self._waiting.pop(ack, None)
        ack.result()  # raises the stream's refusal, if that is the answer

    async def _watch_acks(self) -> None:
        """Runs while any result waits for its ack; cancels the acks given up (see _acked)."""
        while self._waiting:
            await asyncio.sleep(ACK_POLL_SECONDS)
            closed, connected = self._nc.is_closed, self._nc.is_connected
            for ack, wait in list(self._waiting.items()):
                if ack.done():
                    continue
                if closed:
                    wait.given_up = ConnectionClosedError()
                else:
                    wait.unanswered = wait.unanswered + ACK_POLL_SECONDS if connected else 0.0
                    if wait.unanswered >= ACK_PATIENCE_SECONDS:
                        wait.given_up = TimeoutError(f"no ack from {names.STATUS_STREAM} for result {wait.event_id}")
                if wait.given_up is not None:
                    ack.cancel()

    async def publish_transition(self, tenant_id: str, job_id: str, status: TaskStatus, attempt: int) -> None:
        """A non-final transition: fire and forget on agent.status.<status>."""
        body = fabric_event(
            names.status_event_type(status.value),
            {"job_id": job_id, "tenant_id": tenant_id, "status": status.value, "attempt": attempt},
            subject=job_id,
            event_id=f"{tenant_id}/{job_id}/{status.value}/{attempt}",
        )
        await self._nc.publish(names.status_subject(status.value), body)

    async def publish_refusal(self, tenant_id: str, job_id: str, code: str, message: str, *, attempt: str) -> None:
        """A task refused at the door before anything was recorded (its credential): a failure event
        with an id of its own, so it never shadows the job's real result in the duplicate window."""
        event_id = f"{tenant_id}/{job_id}/refused/{attempt}"
        data = {
            "job_id": job_id,
            "tenant_id": tenant_id,
            "status": TaskStatus.REJECTED.value,
            "error": {"code": code, "message": message},
            "attempts": 0,
            "usage": {"tokens": 0, "compute_seconds": 0.0, "cost_usd": 0.0},
        }
        body = fabric_event(names.status_event_type("failed"), data, subject=job_id, event_id=event_id)
        await self._js.publish(names.status_subject("failed"), body, timeout=5, headers={names.MSG_ID_HEADER: event_id})

    async def publish_deadletter(self, data: dict[str, Any]) -> None:
        body = fabric_event(names.DEADLETTER_EVENT_TYPE, data, subject=str(data.get("subject") or "unknown"))
        await self._js.publish(names.DEADLETTER_SUBJECT, body, timeout=5)

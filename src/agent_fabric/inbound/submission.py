"""Accepting a task at the HTTP door: admit it, record it as queued, then put it on the stream.

HTTP callers get the queued state at once, and a retry of the same submission (same job_id,
same content) is answered with the task as it stands instead of running it twice. A task with
unfinished dependencies is recorded as `waiting` and goes on the stream once they completed; a
task that needs approval is recorded as `awaiting_approval` and goes on the stream only once
approved; a task past a hard budget limit is refused before anything is recorded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind, Tracer

from agent_fabric import names
from agent_fabric.admission.checks import Actor, Admission
from agent_fabric.errors import Conflict, QueueFull, ServiceUnavailable
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.security.internal_seal import TASK_PURPOSE, InternalSeal
from agent_fabric.storage.approval_store import ApprovalRecord
from agent_fabric.storage.queue_store import QueueStore
from agent_fabric.storage.task_store import TaskRecord, TaskStore, spec_hash
from agent_fabric.tasks import TaskSpec, TaskStatus
from agent_fabric.telemetry.log_context import bound
from agent_fabric.telemetry.tracing import parent_context, trace_attributes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    created: bool
    existing: TaskRecord | None
    approval: ApprovalRecord | None = None
    waiting: bool = False

    @property
    def status(self) -> str:
        if self.existing is not None:
            return self.existing.status.value
        if self.waiting:
            return TaskStatus.WAITING.value
        return TaskStatus.AWAITING_APPROVAL.value if self.approval is not None else TaskStatus.QUEUED.value


class Submitter:
    def __init__(
        self,
        js: JetStreamContext,
        store: TaskStore,
        queue: QueueStore,
        admission: Admission,
        tracer: Tracer,
        full_status: int = 429,
        *,
        seal: InternalSeal,
    ) -> None:
        self._seal = seal  # the task's caller was checked here: the NATS door takes the fabric's word
        self._full_status = full_status
        self._js = js
        self._store = store
        self._queue = queue
        self._admission = admission
        self._tracer = tracer

    async def submit(
        self,
        spec: TaskSpec,
        *,
        event_id: str | None = None,
        source: str = "agent-fabric/http",
        actor: Actor | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Submitted:
        with self._tracer.start_as_current_span(
            "submit",
            context=parent_context(trace),
            kind=SpanKind.PRODUCER,
            attributes={"agent_fabric.job_id": spec.job_id, "agent_fabric.tenant_id": spec.tenant_id},
        ) as span:
            with bound(job_id=spec.job_id, tenant_id=spec.tenant_id, agent=spec.agent_definition.label):
                submitted = await self._submit(spec, event_id, source, actor, trace_attributes(span))
                log.debug("task accepted", extra={"source": source, "status": submitted.status})
            span.set_attribute("agent_fabric.status", submitted.status)
            return submitted

    async def _submit(
        self, spec: TaskSpec, event_id: str | None, source: str, actor: Actor | None, trace: dict[str, str]
    ) -> Submitted:
        actor = actor or Actor("unknown")
        if actor.name != "unknown" and "user" not in spec.metadata:
            # The caller is the task's user: its user budget and user policy conditions apply.
            spec = spec.model_copy(update={"metadata": {**spec.metadata, "user": actor.name}})
        decision = self._admission.check(spec, actor, door="http")
        event_id = event_id or uuid.uuid4().hex
        hash_ = spec_hash(spec)
        if spec.depends_on:
            # The dependency gate may park it as `waiting` (queued, for the limits) without passing
            # through enqueue() below, so its room is checked first.
            full = await self._queue.room(spec)
            if full is not None:
                raise QueueFull(full, job_id=spec.job_id, tenant_id=spec.tenant_id, status=self._full_status)
        admitted = await self._admission.admit(TaskEvent(event_id, source, spec, trace or None), decision, actor)
        if admitted.verdict == "waiting" and admitted.created:
            return Submitted(created=True, existing=None, waiting=True)
        if admitted.verdict != "run" or admitted.approval is not None:
            return await self._after_gate(spec, hash_, admitted.created, admitted.approval)
        queued = await self._queue.enqueue(spec, hash_, event_id)
        if queued.full is not None:
            await self._admission.release(spec)
            # Nothing is recorded: the caller has its answer, and the same job_id may come back later.
            raise QueueFull(queued.full, job_id=spec.job_id, tenant_id=spec.tenant_id, status=self._full_status)
        if not queued.inserted:
            existing = queued.existing or await self._store.get(spec.tenant_id, spec.job_id)
            if existing is None:
                raise Conflict(f"job {spec.job_id!r} is being submitted concurrently; retry", code="job_exists")
            return Submitted(created=False, existing=_same_content(existing, spec, hash_))
        body = orjson.dumps(
            {
                **trace,
                "specversion": "1.0",
                "id": event_id,
                "source": source,
                "type": names.TASK_EVENT_TYPE,
                "datacontenttype": "application/json",
                "data": spec.model_dump(mode="json"),
            }
        )
        try:
            await self._js.publish(
                names.task_subject(spec.priority.value),
                body,
                timeout=5,
                headers={
                    names.MSG_ID_HEADER: event_id,
                    names.SEAL_HEADER: self._seal.sign(TASK_PURPOSE, event_id, body),
                },
            )
        except Exception as exc:
            await self._store.delete_queued(spec.tenant_id, spec.job_id)
            await self._admission.release(spec)
            raise ServiceUnavailable(f"could not queue the task on JetStream: {type(exc).__name__}; retry") from exc
        return Submitted(created=True, existing=None)

    async def _after_gate(
        self, spec: TaskSpec, hash_: str, created: bool, approval: ApprovalRecord | None
    ) -> Submitted:
        """Parked now, failed at once (a dependency had failed), or the job already went through its
        gates: answer with where it stands."""
        if created and approval is not None:
            return Submitted(created=True, existing=None, approval=approval)
        existing = await self._store.get(spec.tenant_id, spec.job_id)
        if existing is None:  # a gate's record of a job whose task row is gone (cannot happen short of manual deletes)
            raise Conflict(f"job {spec.job_id!r} passed a gate but has no task", code="job_exists")
        return Submitted(created=created, existing=_same_content(existing, spec, hash_), approval=approval)


def _same_content(existing: TaskRecord, spec: TaskSpec, hash_: str) -> TaskRecord:
    if existing.spec_hash != hash_:
        raise Conflict(
            f"job {spec.job_id!r} already exists in tenant {spec.tenant_id!r} with other content",
            code="job_exists",
            task_status=existing.status.value,
        )
    return existing

"""`AgentScheduler`: the seed's scheduling interface (FR-SCHED-1..6), the public API of this package.

The HTTP routes (/api/v1/tasks, /api/v1/agents/{agent}/pending) call it; Python callers use
`fabric.scheduler`. Scheduling itself happens where the tasks are: `schedule()` admits the task
and puts it on `agent.execute.<priority>`, and whichever replica fetches it orders it in its
fair run queue (scheduling/queue.py). Every method works from any replica: state is read from
and written to the database, and a cancellation reaches the replica running the task over NATS.

An agent is named by an AgentDefinition or by a string: a registered agent's id (agents/; admission
refuses an id that is not a registered agent of the tenant with `unknown_agent`), else `<runtime>`
or `<runtime>/<profile>` (e.g. `builtin`, `agent-zero/gpubroker-provisioner`), the same label
metrics, caps and list_pending use.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import get_args

from sqlalchemy import select

from agent_fabric.admission.checks import Actor
from agent_fabric.errors import InvalidTask, NotFound
from agent_fabric.inbound.submission import Submitted, Submitter
from agent_fabric.scheduling.cancellation import Canceller, CancelResult
from agent_fabric.storage.queue_store import QUEUED_STATUSES
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import TaskRecord, TaskStore
from agent_fabric.tasks import DEFAULT_TENANT, AgentDefinition, Priority, Runtime, TaskBody, TaskSpec, TaskStatus

RuntimeOf = Callable[[str], str | None]  # a registered agent's runtime, None for an unknown id


@dataclass(frozen=True, slots=True)
class TaskHandle:
    task_id: str
    tenant_id: str
    status: TaskStatus
    created: bool


def agent_definition(agent: AgentDefinition | str, runtime_of: RuntimeOf | None = None) -> AgentDefinition:
    if isinstance(agent, AgentDefinition):
        return agent
    # A registered agent's id (agents/): it runs on its own runtime; admission checks its tenant.
    registered = runtime_of(agent) if runtime_of is not None else None
    if registered is not None:
        runtime = registered if registered in get_args(Runtime) else "process"
        return AgentDefinition.model_validate({"runtime": runtime, "agent_id": agent})
    runtime, _, profile = agent.partition("/")
    if runtime not in get_args(Runtime):
        raise InvalidTask(
            f"agent {agent!r}: expected <runtime>[/<profile>] with a runtime of {', '.join(get_args(Runtime))}",
            code="unknown_agent",
        )
    return AgentDefinition.model_validate({"runtime": runtime, "profile": profile or None})


class AgentScheduler:
    def __init__(
        self, submitter: Submitter, store: TaskStore, canceller: Canceller, runtime_of: RuntimeOf | None = None
    ) -> None:
        self._submitter = submitter
        self._store = store
        self._canceller = canceller
        self._runtime_of = runtime_of

    async def submit(
        self,
        spec: TaskSpec,
        *,
        actor: Actor,
        event_id: str | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Submitted:
        """A whole task as a CloudEvent's data carries it (the HTTP and CloudEvents doors)."""
        return await self._submitter.submit(spec, event_id=event_id, actor=actor, trace=trace)

    async def schedule(
        self,
        task: TaskBody,
        agent_id: AgentDefinition | str,
        priority: Priority = Priority.NORMAL,
        depends_on: list[str] | None = None,
        timeout_seconds: float | None = None,
        *,
        tenant_id: str = DEFAULT_TENANT,
        task_id: str | None = None,
        actor: Actor | None = None,
    ) -> TaskHandle:
        spec = TaskSpec(
            job_id=task_id or f"task-{uuid.uuid4().hex}",
            tenant_id=tenant_id,
            agent_definition=agent_definition(agent_id, self._runtime_of),
            task=task,
            priority=priority,
            depends_on=depends_on or [],
            timeout_seconds=timeout_seconds,
        )
        submitted = await self.submit(spec, actor=actor or Actor("scheduler"))
        return TaskHandle(spec.job_id, tenant_id, TaskStatus(submitted.status), submitted.created)

    async def cancel(
        self, task_id: str, *, tenant_id: str = DEFAULT_TENANT, actor: str = "scheduler", reason: str | None = None
    ) -> bool:
        """True if the task is cancelled or will be (it was running); False if it had already
        finished otherwise or does not exist (`cancel_task` says which)."""
        return (await self.cancel_task(task_id, tenant_id=tenant_id, actor=actor, reason=reason)).accepted

    async def cancel_task(
        self, task_id: str, *, tenant_id: str = DEFAULT_TENANT, actor: str = "scheduler", reason: str | None = None
    ) -> CancelResult:
        return await self._canceller.cancel(tenant_id, task_id, actor, reason)

    async def get(self, task_id: str, *, tenant_id: str = DEFAULT_TENANT) -> TaskRecord:
        record = await self._store.get(tenant_id, task_id)
        if record is None:
            raise NotFound(f"no task {task_id!r} in tenant {tenant_id!r}")
        return record

    async def get_status(self, task_id: str, *, tenant_id: str = DEFAULT_TENANT) -> TaskStatus:
        return (await self.get(task_id, tenant_id=tenant_id)).status

    async def list_pending(
        self, agent_id: AgentDefinition | str, *, tenant_id: str = DEFAULT_TENANT, limit: int = 500
    ) -> list[TaskSpec]:
        """Tasks of the agent not started yet (queued, or waiting for dependencies), oldest first."""
        label = agent_id.label if isinstance(agent_id, AgentDefinition) else agent_id
        stmt = (
            select(tasks.c.spec)
            .where(
                tasks.c.tenant_id == tenant_id,
                tasks.c.status.in_(QUEUED_STATUSES),
                tasks.c.agent_label == label,
            )
            .order_by(tasks.c.created_at, tasks.c.job_id)
            .limit(limit)
        )
        async with self._store.engine.connect() as conn:
            return [TaskSpec.model_validate(row.spec) for row in await conn.execute(stmt)]

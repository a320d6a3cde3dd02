"""Admission: what a task must pass before it runs, in order, the same at both doors.

1. RefuseSelfDependency: a task in its own `depends_on` is a cycle (`dependency_cycle`);
   RefuseUnknownAgent: an `agent_id` that names no registered agent of the tenant (`unknown_agent`).
2. The runtime's own checks (drivers/*: unknown task types, bad inputs; runtime_unavailable).
3. ApplyPolicy: the action `task:<TYPE>` against the tenant's, workspace's and agent's policies;
   deny -> `policy_denied`; require_approval -> the task parks until approvers decide (a task
   no rule matches parks too when its type is high-impact: DEPLOY_GPU, TERMINATE_GPU, SCALE_GPU).
4. ReserveBudget: the task's estimate on its tenant, agent and user budgets; LIVE tenants past a
   hard limit -> `budget_exceeded`.
Steps 1-3 decide in memory: the NATS door runs them as it takes a message, the HTTP door before
it records anything. Parking and reserving touch the database; they run in a worker slot (NATS)
or in the request (HTTP), before the task is claimed or queued, in this order:
a. AwaitDependencies (admission/dependencies.py): a task with `depends_on` waits (`waiting`) until
   every dependency completed, or fails with `dependency_failed`; cycles -> `dependency_cycle`.
   It comes first so approvers are asked, and budgets charged, only for a task that could run;
   once released its CloudEvent comes back through the door and meets the gates below.
b. The approval gate of step 3, then step 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agent_fabric.admission.approvals import ApprovalDesk
from agent_fabric.admission.budget import BudgetManager
from agent_fabric.admission.dependencies import Dependencies
from agent_fabric.admission.dependency_graph import refuse_self_dependency
from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.admission.policy_model import Action, Effect, PolicyContext, PolicyDecision
from agent_fabric.drivers.factory import Drivers
from agent_fabric.errors import PolicyDenied
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.storage.approval_store import ApprovalRecord
from agent_fabric.tasks import TaskSpec

Check = Callable[[TaskSpec], None]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who submits: over HTTP the token's subject and role; over NATS the task's metadata.user or
    the event's source."""

    name: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    verdict: Literal["run", "parked", "waiting", "settled"]
    approval: ApprovalRecord | None = None
    created: bool = False


def task_action(spec: TaskSpec) -> Action:
    return Action("task", spec.task.type, spec.task.input)


def task_context(spec: TaskSpec, actor: Actor) -> PolicyContext:
    return PolicyContext(
        tenant_id=spec.tenant_id,
        workspace_id=spec.metadata.get("workspace_id"),
        agent_id=spec.agent_definition.label,
        user=spec.metadata.get("user") or actor.name,
        role=actor.role,
        attributes={
            "runtime": spec.agent_definition.runtime,
            "profile": spec.agent_definition.profile,
            "priority": spec.priority.value,
        },
    )


class Admission:
    def __init__(
        self,
        drivers: Drivers,
        policies: PolicyEngine | None = None,
        approvals: ApprovalDesk | None = None,
        budgets: BudgetManager | None = None,
        dependencies: Dependencies | None = None,
        known_agents: Check | None = None,
    ) -> None:
        # known_agents (agents/directory.py): an agent_id must name a registered agent (`unknown_agent`).
        self._checks: tuple[Check, ...] = (
            refuse_self_dependency,
            *((known_agents,) if known_agents else ()),
            drivers.check,
        )
        self._dependencies = dependencies
        self._policies = policies
        self._approvals = approvals
        self._budgets = budgets

    def check(self, spec: TaskSpec, actor: Actor | None = None, *, door: str = "nats") -> PolicyDecision | None:
        """Steps 1-3, in memory. Raises InvalidTask (PolicyDenied for a deny)."""
        for check in self._checks:
            check(spec)
        if self._policies is None:
            return None
        actor = actor or Actor("unknown")
        decision = self._policies.decide(task_action(spec), task_context(spec, actor), actor=actor.name, door=door)
        if decision.effect == Effect.DENY:
            denied = PolicyDenied(decision.reason, job_id=spec.job_id, tenant_id=spec.tenant_id)
            denied.extra = {"policy_id": decision.policy_id, "policy_version": decision.policy_version}
            raise denied
        return decision

    async def admit(self, event: TaskEvent, decision: PolicyDecision | None, actor: Actor) -> Admitted:
        """Dependencies, then steps 3 (approval) and 4. Raises InvalidTask (a dependency cycle) and
        BudgetExceeded."""
        if event.spec.depends_on and self._dependencies is not None:
            gate = await self._dependencies.admit(event)
            if gate.verdict != "run":
                return Admitted(gate.verdict, created=gate.created)
        approval = None
        if decision is not None and decision.effect == Effect.REQUIRE_APPROVAL and self._approvals is not None:
            hold = await self._approvals.hold(event, decision, actor.name)
            if hold.outcome == "parked":
                return Admitted("parked", hold.approval, hold.created)
            if hold.outcome == "settled":
                return Admitted("settled", hold.approval)
            approval = hold.approval  # approved (or the task is already past waiting): go on
        if self._budgets is not None:
            await self._budgets.reserve(event.spec, actor=actor.name)
        return Admitted("run", approval)

    async def release(self, spec: TaskSpec) -> None:
        """Undo step 4 for a task that will not run after all."""
        if self._budgets is not None:
            await self._budgets.release(spec.tenant_id, spec.job_id)

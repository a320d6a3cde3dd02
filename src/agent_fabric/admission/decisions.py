"""Decision records (seed 000 req. 2.3): every task put to approvers is a decision, kept for review.

Every task that a policy (or the built-in high-impact gate) parks for approval becomes one
decision: `task:<TYPE>` about its job id, with the task's type and an input summary, the
requester and the policy's reason. Each step is written in the transaction that makes it
happen, so no step is lost and none is recorded that did not happen:
- proposed: in the transaction that parks the task and opens its approval (ApprovalDesk.hold);
- approved / rejected / expired: in the transaction that decides the approval, whoever decides
  it (the v1 approvals API, /api/v2/agent/tasks/{id}/approve, an override, the expiry sweep);
- executed / failed: in the transaction that records the task's outcome (a TaskStore finish hook).
An override decides the decision's pending approval through ApprovalDesk.decide, so its rules
hold (named approvers, never the requester), with the admin's notes as the reason; the override
stamp and its `decision.override` audit entry commit with that decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.admission.approvals import ApprovalDesk
from agent_fabric.admission.policy_model import PolicyDecision
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import Conflict, InvalidRequest, NotFound
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.security.tokens import Principal
from agent_fabric.storage import decision_store as store
from agent_fabric.storage.approval_store import ApprovalRecord
from agent_fabric.storage.decision_store import DecisionReader, DecisionRecord
from agent_fabric.storage.task_store import TaskRecord, utcnow
from agent_fabric.tenants import TenantRegistry

# Inputs beyond this are summarised by a preview: the decision list stays light, and the full
# task is in the approval and the task record.
MAX_INPUT_SUMMARY = 2000


def input_summary(data: dict[str, Any]) -> dict[str, Any]:
    text = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) <= MAX_INPUT_SUMMARY:
        return data
    return {"truncated": True, "bytes": len(text), "preview": text[:MAX_INPUT_SUMMARY]}


class DecisionLog:
    """Writes decision records as approvals move (an ApprovalListener), settles them as tasks
    finish (task_finished, a FinishHook), reads them, and overrides them."""

    def __init__(self, engine: AsyncEngine, tenants: TenantRegistry) -> None:
        self._tenants = tenants
        self.reader = DecisionReader(engine)

    async def parked(
        self, conn: AsyncConnection, record: ApprovalRecord, decision: PolicyDecision, event: TaskEvent
    ) -> None:
        spec = event.spec
        detail = {
            "task": {
                "type": spec.task.type,
                "input": input_summary(spec.task.input),
                "has_message": spec.task.message is not None,
            },
            "runtime": spec.agent_definition.runtime,
            "profile": spec.agent_definition.profile,
            "priority": spec.priority.value,
            "requested_by": record.requested_by,
            "policy": {
                "effect": decision.effect.value,
                "policy_id": decision.policy_id,
                "policy_version": decision.policy_version,
                "reason": decision.reason,
            },
            "approvers": record.approvers,
            "expires_at": record.expires_at.isoformat(),
        }
        await store.insert_decision(
            conn,
            {
                "id": uuid.uuid4().hex,
                "tenant_id": record.tenant_id,
                "kind": record.action[:160],
                "subject": spec.job_id,
                "approval_id": record.id,
                "status": store.PROPOSED,
                "proposed_by": (record.requested_by or "unknown")[:128],
                "detail": detail,
                "created_at": record.requested_at,
                "updated_at": record.requested_at,
            },
        )

    async def decided(self, conn: AsyncConnection, record: ApprovalRecord) -> None:
        if record.job_id is None:  # an approval of a tool, file or URL action: no decision record
            return
        # The approval's statuses are the decision's: approved, rejected, expired.
        await store.settle_approval(conn, record.id, record.status, record.decided_at or utcnow())

    async def task_finished(self, conn: AsyncConnection, finished: Sequence[TaskRecord]) -> None:
        await store.settle_tasks(conn, finished, utcnow())

    async def get(self, tenant_id: str, decision_id: str) -> DecisionRecord:
        record = await self.reader.get(decision_id)
        if record is None or record.tenant_id != tenant_id:
            raise NotFound(f"no decision {decision_id!r} in POD {tenant_id!r}")
        return record

    async def override(
        self,
        desk: ApprovalDesk,
        tenant_id: str,
        decision_id: str,
        *,
        approve: bool,
        notes: str,
        principal: Principal,
    ) -> DecisionRecord:
        """Approve or reject a proposed decision, with the admin's notes (required)."""
        notes = notes.strip()
        if not notes:
            raise InvalidRequest("an override needs notes: say why", code="notes_required")
        record = await self.get(tenant_id, decision_id)
        if record.status != store.PROPOSED or record.approval_id is None:
            raise Conflict(f"decision {decision_id} is already {record.status}", code="decision_not_pending")

        verb = "approve" if approve else "reject"

        async def stamp(conn: AsyncConnection, approval: ApprovalRecord) -> None:
            await store.stamp_override(conn, decision_id, principal.subject, notes, utcnow())
            await append(
                conn,
                AuditEntry(
                    "decision.override",
                    principal.subject,
                    tenant_id,
                    self._tenants.mode_for(tenant_id),
                    request={"decision_id": decision_id, "decision": verb, "notes": notes},
                    response={
                        "status": approval.status,
                        "kind": record.kind,
                        "subject": record.subject,
                        "approval_id": approval.id,
                    },
                ),
            )

        await desk.decide(record.approval_id, approve=approve, principal=principal, reason=notes, also=stamp)
        return await self.get(tenant_id, decision_id)

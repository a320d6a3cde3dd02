"""Approval records as they are created, and the events that announce them (through the outbox)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import orjson

from agent_fabric import names
from agent_fabric.admission.policy_model import PolicyContext, PolicyDecision
from agent_fabric.events.envelope import TRACE_KEYS, TaskEvent, fabric_event
from agent_fabric.outbound.results import result_event
from agent_fabric.storage.approval_store import PENDING, ApprovalRecord
from agent_fabric.storage.outbox import OutboxMessage
from agent_fabric.storage.task_store import TaskRecord, utcnow


def new_record(
    tenant_id: str,
    decision: PolicyDecision,
    requester: str,
    ttl: timedelta,
    ctx: PolicyContext | None = None,
    *,
    task: TaskEvent | None = None,
) -> ApprovalRecord:
    now = utcnow()
    return ApprovalRecord(
        id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        job_id=task.spec.job_id if task else None,
        action=decision.action[:1024],
        status=PENDING,
        approvers=list(decision.approvers),
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        context=context_view(ctx) if ctx else None,
        event=(
            {"id": task.id, "source": task.source, "data": task.spec.model_dump(mode="json"), **(task.trace or {})}
            if task
            else None
        ),
        requested_by=requester[:128],
        requested_at=now,
        expires_at=now + ttl,
        decided_by=None,
        decided_at=None,
        reason=None,
    )


def context_view(ctx: PolicyContext) -> dict[str, Any]:
    return {
        "tenant_id": ctx.tenant_id,
        "workspace_id": ctx.workspace_id,
        "agent_id": ctx.agent_id,
        "user": ctx.user,
        "role": ctx.role,
    }


def row(record: ApprovalRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


def _links(approval_id: str) -> dict[str, str]:
    base = f"/api/v1/approvals/{approval_id}"
    return {"self": base, "approve": f"{base}/approve", "reject": f"{base}/reject"}


def requested(record: ApprovalRecord) -> OutboxMessage:
    data = {
        "approval_id": record.id,
        "tenant_id": record.tenant_id,
        "job_id": record.job_id,
        "action": record.action,
        "approvers": record.approvers,
        "requested_by": record.requested_by,
        "requested_at": _iso(record.requested_at),
        "expires_at": _iso(record.expires_at),
        "policy_id": record.policy_id,
        "policy_version": record.policy_version,
        "links": _links(record.id),
    }
    event_id = f"approval/{record.id}/requested"
    body = fabric_event(names.APPROVAL_REQUESTED_EVENT_TYPE, data, subject=record.id, event_id=event_id)
    return OutboxMessage(names.APPROVALS_REQUESTED_SUBJECT, event_id, body)


def decided(record: ApprovalRecord) -> OutboxMessage:
    data = {
        "approval_id": record.id,
        "tenant_id": record.tenant_id,
        "job_id": record.job_id,
        "action": record.action,
        "status": record.status,
        "decided_by": record.decided_by,
        "decided_at": _iso(record.decided_at),
        "reason": record.reason,
    }
    event_id = f"approval/{record.id}/{record.status}"
    body = fabric_event(names.APPROVAL_DECIDED_EVENT_TYPE, data, subject=record.id, event_id=event_id)
    return OutboxMessage(names.APPROVALS_DECIDED_SUBJECT, event_id, body)


def requeue(record: ApprovalRecord) -> OutboxMessage:
    """The approved task's own CloudEvent (same id), back on its priority's subject."""
    assert record.event is not None
    data = record.event["data"]
    body = orjson.dumps(
        {
            **{key: record.event[key] for key in TRACE_KEYS if key in record.event},
            "specversion": "1.0",
            "id": record.event["id"],
            "source": record.event["source"],
            "type": names.TASK_EVENT_TYPE,
            "datacontenttype": "application/json",
            "data": data,
        }
    )
    return OutboxMessage(names.task_subject(data["priority"]), names.approval_requeue_msg_id(record.id), body)


def result(task: TaskRecord) -> OutboxMessage:
    subject, body, event_id = result_event(task)
    return OutboxMessage(subject, event_id, body)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None

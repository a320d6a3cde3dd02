"""/api/v2/agent/decisions: review and override the POD's decisions (seed 000 req. 2.3).

A decision is a high-impact action put to approvers (admission/decisions.py). An override
approves or rejects a `proposed` one: notes are required (422 without), it is decided through
the approval desk (the requester cannot override its own proposal: 403), it is recorded on the
decision (overridden_by, override_notes, overridden_at) and in the audit trail
(`decision.override`, with the notes). A decision already decided: 409. Another POD's: 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.inbound.api.agent_tasks import approval_brief
from agent_fabric.inbound.api.deps import Offset
from agent_fabric.inbound.api.pod import Pod, PodCall
from agent_fabric.storage.decision_store import DecisionRecord, DecisionStatus

router = APIRouter(prefix="/api/v2/agent/decisions", tags=["agent-v2"])

DecisionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The decision's id.")]


class Override(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    notes: str = Field(..., min_length=1, max_length=4000, description="The admin's notes: why. Required.")


def decision_view(record: DecisionRecord) -> dict[str, Any]:
    job_link = f"/api/v2/agent/tasks/{record.subject}?tenant_id={record.tenant_id}"
    return {
        "id": record.id,
        "pod_id": record.tenant_id,
        "kind": record.kind,
        "subject": record.subject,
        "status": record.status,
        "proposed_by": record.proposed_by,
        "approval_id": record.approval_id,
        "detail": record.detail,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "override": (
            {"by": record.overridden_by, "notes": record.override_notes, "at": record.overridden_at}
            if record.overridden_by is not None
            else None
        ),
        "links": {
            "self": f"/api/v2/agent/decisions/{record.id}?tenant_id={record.tenant_id}",
            "override": f"/api/v2/agent/decisions/{record.id}/override?tenant_id={record.tenant_id}",
            "task": job_link if record.kind.startswith("task:") else None,
        },
    }


async def _detail(pod: PodCall, record: DecisionRecord) -> dict[str, Any]:
    view = decision_view(record)
    approval = None
    if record.approval_id is not None:
        approval = await pod.fabric.governance.approvals.reader.get(record.approval_id)
    view["approval"] = approval_brief(approval) if approval else None
    return view


@router.get("", summary="The POD's decisions, newest first")
async def list_decisions(
    pod: Pod,
    status: Annotated[DecisionStatus | None, Query()] = None,
    kind: Annotated[str | None, Query(max_length=160, description="e.g. task:DEPLOY_GPU")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> JSONResponse:
    records = await pod.fabric.governance.decisions.reader.list(
        tenant_id=pod.tenant_id, status=status, kind=kind, limit=limit, offset=offset
    )
    items = [decision_view(r) for r in records]
    return pod.reply({"pod_id": pod.tenant_id, "items": items, "limit": limit, "offset": offset})


@router.get("/{decision_id}", summary="One decision, with its approval")
async def get_decision(decision_id: DecisionId, pod: Pod) -> JSONResponse:
    return pod.reply(await _detail(pod, await pod.fabric.governance.decisions.get(pod.tenant_id, decision_id)))


@router.post("/{decision_id}/override", summary="Approve or reject a proposed decision, with notes")
async def override_decision(decision_id: DecisionId, body: Override, pod: Pod) -> JSONResponse:
    governance = pod.fabric.governance
    record = await governance.decisions.override(
        governance.approvals,
        pod.tenant_id,
        decision_id,
        approve=body.decision == "approve",
        notes=body.notes,
        principal=pod.principal,
    )
    return pod.reply(await _detail(pod, record))

"""/api/v1/approvals: pending approvals, and named approvers deciding them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.admission.policy_model import SCOPE_ID_PATTERN, Action, PolicyContext
from agent_fabric.errors import InvalidRequest, NotFound
from agent_fabric.inbound.api.deps import ApprovalDecider, ApprovalRequester, ApprovalViewer, FabricDep, Offset
from agent_fabric.security.deps import tenant_scope
from agent_fabric.storage.approval_store import ApprovalRecord
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])

ApprovalId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The approval's id.")]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000, description="Why; required to reject.")


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(..., min_length=3, max_length=1024, description="<kind>:<target>, e.g. shell:rm -rf /data")
    tenant_id: str | None = Field(None, pattern=TENANT_ID_PATTERN)
    workspace_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)
    agent_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)
    approvers: list[str] = Field(default_factory=list, max_length=50)
    ttl_seconds: float | None = Field(None, gt=0)


def _view(record: ApprovalRecord) -> dict[str, Any]:
    return {
        **record.view(),
        "links": {
            "approve": f"/api/v1/approvals/{record.id}/approve",
            "reject": f"/api/v1/approvals/{record.id}/reject",
        },
    }


@router.get("", summary="List approvals, newest first")
async def list_approvals(
    fabric: FabricDep,
    principal: ApprovalViewer,
    tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN)] = None,
    status: Annotated[Literal["pending", "approved", "rejected", "expired"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    records = await fabric.governance.approvals.reader.list(
        tenant_id=tenant_scope(principal, tenant_id), status=status, limit=limit, offset=offset
    )
    return {"items": [_view(r) for r in records], "limit": limit, "offset": offset}


@router.get("/{approval_id}", summary="One approval")
async def get_approval(approval_id: ApprovalId, fabric: FabricDep, principal: ApprovalViewer) -> dict[str, Any]:
    record = await fabric.governance.approvals.reader.get(approval_id)
    if record is None or (principal.tenant_id is not None and record.tenant_id != principal.tenant_id):
        raise NotFound(f"no approval {approval_id!r}")
    return _view(record)


@router.post("/{approval_id}/approve", summary="Approve: the task runs (on any replica)")
async def approve(
    approval_id: ApprovalId,
    fabric: FabricDep,
    principal: ApprovalDecider,
    decision: Annotated[Decision | None, Body()] = None,
) -> dict[str, Any]:
    reason = decision.reason if decision else None
    record = await fabric.governance.approvals.decide(approval_id, approve=True, principal=principal, reason=reason)
    return _view(record)


@router.post("/{approval_id}/reject", summary="Reject with a reason: the task fails with `rejected`")
async def reject(
    approval_id: ApprovalId, fabric: FabricDep, principal: ApprovalDecider, decision: Decision
) -> dict[str, Any]:
    record = await fabric.governance.approvals.decide(
        approval_id, approve=False, principal=principal, reason=decision.reason
    )
    return _view(record)


@router.post("", status_code=201, summary="Ask for approval of an action (agents poll the approval)")
async def request_approval(request: ApprovalRequest, fabric: FabricDep, principal: ApprovalRequester) -> JSONResponse:
    tenant_id = tenant_scope(principal, request.tenant_id)
    if tenant_id is None:
        raise InvalidRequest("name the tenant (tenant_id) the action happens in", code="tenant_required")
    try:
        action = Action.parse(request.action)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_action") from None
    ctx = PolicyContext(
        tenant_id=tenant_id,
        workspace_id=request.workspace_id,
        agent_id=request.agent_id,
        user=principal.subject,
        role=principal.role,
    )
    record = await fabric.governance.approvals.request(
        action, ctx, request.approvers, request.ttl_seconds, principal.subject
    )
    return JSONResponse(jsonable_encoder(_view(record)), status_code=201)

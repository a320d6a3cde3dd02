"""/api/v1/policies: versioned policy documents, live on every replica, and decisions on demand."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.admission.policy import validate_policy
from agent_fabric.admission.policy_model import POLICY_ID_PATTERN, SCOPE_ID_PATTERN, Action, PolicyContext
from agent_fabric.errors import InvalidRequest, NotFound
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.deps import FabricDep, PolicyAsker, PolicyEditor, PolicyViewer
from agent_fabric.security.deps import tenant_scope
from agent_fabric.security.tokens import Principal
from agent_fabric.storage.documents import POLICY, StoredDoc
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/policies", tags=["policies"])

PolicyId = Annotated[str, Path(pattern=POLICY_ID_PATTERN, description="The policy's id, unique across tenants.")]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")]
IfMatch = Annotated[str | None, Header(description="The version you read; the write fails with 409 if it moved.")]


def _view(doc: StoredDoc) -> dict[str, Any]:
    return {
        "id": doc.doc_id,
        "tenant_id": doc.tenant_id,
        "version": doc.version,
        "deleted": doc.deleted,
        "updated_at": doc.at,
        "updated_by": doc.by,
        "policy": doc.body,
    }


def _version(header: str | None) -> int | None:
    if header is None:
        return None
    text = header.strip().strip('"')
    if not text.isdigit():
        raise InvalidRequest("If-Match carries the policy version you read, a number", code="invalid_if_match")
    return int(text)


async def _visible(fabric: Fabric, principal: Principal, policy_id: str) -> StoredDoc:
    doc = await fabric.governance.docs.get(POLICY, policy_id)
    if doc is None or doc.deleted or (principal.tenant_id is not None and doc.tenant_id != principal.tenant_id):
        raise NotFound(f"no policy {policy_id!r}")
    return doc


@router.get("", summary="List the current policies")
async def list_policies(fabric: FabricDep, principal: PolicyViewer, tenant_id: TenantQuery = None) -> dict[str, Any]:
    docs = await fabric.governance.docs.current(POLICY, tenant_scope(principal, tenant_id))
    return {"items": [_view(d) for d in docs], "rules_loaded": fabric.governance.policies.rule_count}


@router.get("/{policy_id}", summary="A policy as it stands")
async def get_policy(policy_id: PolicyId, fabric: FabricDep, principal: PolicyViewer) -> dict[str, Any]:
    return _view(await _visible(fabric, principal, policy_id))


@router.get("/{policy_id}/versions", summary="Every version of a policy, newest first")
async def policy_versions(
    policy_id: PolicyId,
    fabric: FabricDep,
    principal: PolicyViewer,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    history = await fabric.governance.docs.history(POLICY, policy_id, limit)
    if not history or (principal.tenant_id is not None and history[0].tenant_id != principal.tenant_id):
        raise NotFound(f"no policy {policy_id!r}")
    return {"id": policy_id, "versions": [_view(d) for d in history]}


@router.put("/{policy_id}", summary="Create or replace a policy (a new version, live everywhere within a second)")
async def put_policy(
    policy_id: PolicyId,
    fabric: FabricDep,
    principal: PolicyEditor,
    payload: Annotated[dict[str, Any], Body(description="{scope, rules, priority, description, enabled}")],
    if_match: IfMatch = None,
) -> JSONResponse:
    policy = validate_policy(payload)
    tenant_scope(principal, policy.scope.tenant_id)
    existing = await fabric.governance.docs.get(POLICY, policy_id)
    if existing is not None:
        tenant_scope(principal, existing.tenant_id)  # a tenant cannot take over another tenant's policy id
    doc = await fabric.governance.policies.update_policy(
        policy_id, policy, actor=principal.subject, expected_version=_version(if_match)
    )
    return JSONResponse(
        jsonable_encoder(_view(doc)), status_code=201 if doc.version == 1 else 200, headers={"ETag": str(doc.version)}
    )


@router.delete("/{policy_id}", summary="Remove a policy (kept in its history)")
async def delete_policy(
    policy_id: PolicyId, fabric: FabricDep, principal: PolicyEditor, if_match: IfMatch = None
) -> dict[str, Any]:
    await _visible(fabric, principal, policy_id)
    doc = await fabric.governance.policies.delete_policy(
        policy_id, actor=principal.subject, expected_version=_version(if_match)
    )
    return _view(doc)


class CheckContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str | None = Field(None, pattern=TENANT_ID_PATTERN)
    workspace_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)
    agent_id: str | None = Field(None, pattern=SCOPE_ID_PATTERN)
    user: str | None = Field(None, max_length=128)
    attributes: dict[str, Any] = Field(default_factory=dict)


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(..., min_length=3, max_length=4096, description="<kind>:<target>, e.g. shell:rm -rf /tmp")
    input: dict[str, Any] = Field(default_factory=dict, description="The action's attributes (input.* conditions).")
    context: CheckContext = Field(default_factory=CheckContext)


@router.post("/check", summary="Decide an action now (tool use, file, URL, shell command, task)")
async def check_action(request: CheckRequest, fabric: FabricDep, principal: PolicyAsker) -> dict[str, Any]:
    tenant_id = tenant_scope(principal, request.context.tenant_id) or "default"
    try:
        action = Action.parse(request.action, request.input)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_action") from None
    ctx = PolicyContext(
        tenant_id=tenant_id,
        workspace_id=request.context.workspace_id,
        agent_id=request.context.agent_id,
        user=request.context.user or principal.subject,
        role=principal.role,
        attributes=request.context.attributes,
    )
    decision = fabric.governance.policies.decide(action, ctx, actor=principal.subject, door="api")
    return decision.as_dict()

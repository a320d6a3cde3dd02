"""/api/v1/llm: what administrators manage about the gateway (fabric JWTs, like the rest of /api).

- `POST /api/v1/llm/keys`: mint an instance key for an Agent Zero instance (shown once);
  `DELETE /api/v1/llm/keys/{key_id}` revokes it.
- `PUT|DELETE /api/v1/llm/upstream-keys/{upstream}`: the tenant's own key for an upstream, sealed
  at rest, write-only (no response or audit entry carries it).
- `GET /api/v1/llm/calls?job_id=`: the metered calls of the tenant (or of one task).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import select

from agent_fabric.audit.entries import AuditEntry
from agent_fabric.errors import InvalidRequest, NotFound
from agent_fabric.inbound.api.deps import BudgetViewer, FabricDep, tenant_required
from agent_fabric.llm_gateway.keys import key_hash
from agent_fabric.security import roles
from agent_fabric.security.deps import require
from agent_fabric.security.tokens import Principal
from agent_fabric.storage.llm_tables import llm_calls
from agent_fabric.tasks import JOB_ID_PATTERN, TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/llm", tags=["llm-gateway"])

KeyManager = Annotated[Principal, Depends(require(roles.KEYS_MANAGE))]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")]


class InstanceKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(..., pattern=r"^[A-Za-z0-9._:-]{1,64}$", description="The Agent Zero instance it is for.")
    agent: str = Field(
        "agent-zero", pattern=r"^[A-Za-z0-9._:/@-]{1,160}$", description="The agent budget its spend counts against."
    )
    instance_url: str | None = Field(
        None,
        max_length=2048,
        description="The instance's URL as the fabric knows it (AGENT_ZERO_URL or its registration): a call "
        "made while exactly one of the tenant's sessions is answering there is charged to that session.",
    )


class UpstreamKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(..., min_length=1, max_length=1024, description="The tenant's key (never returned).")


def _audit(fabric: FabricDep, principal: Principal, tenant: str, action: str, request: dict[str, object]) -> None:
    fabric.governance.audit.record(
        AuditEntry(action, principal.subject, tenant, fabric.governance.tenants.mode_for(tenant), request=request)
    )


@router.post("/keys", status_code=201, summary="Mint a gateway key for an Agent Zero instance (shown once)")
async def mint_instance_key(
    body: InstanceKeyRequest, fabric: FabricDep, principal: KeyManager, tenant_id: TenantQuery = None
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    key = await fabric.llm_keys.mint_for_instance(tenant, body.instance_id, body.agent, body.instance_url)
    key_id = key_hash(key)[:16]
    _audit(
        fabric,
        principal,
        tenant,
        "llm.key.mint",
        {"instance_id": body.instance_id, "agent": body.agent, "key_id": key_id},
    )
    return JSONResponse(
        {
            "key_id": key_id,
            "api_key": key,
            "tenant_id": tenant,
            "instance_id": body.instance_id,
            "agent": body.agent,
            "base_url": fabric.task_llm.base_url,
        },
        status_code=201,
    )


@router.delete("/keys/{key_id}", summary="Revoke an instance key")
async def revoke_instance_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    fabric: FabricDep,
    principal: KeyManager,
    tenant_id: TenantQuery = None,
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    if not await fabric.llm_keys.revoke_instance_key(tenant, key_id):
        raise NotFound(f"no live instance key {key_id!r} in tenant {tenant!r}")
    _audit(fabric, principal, tenant, "llm.key.revoke", {"key_id": key_id})
    return JSONResponse({"key_id": key_id, "revoked": True})


@router.put("/upstream-keys/{upstream}", summary="Set the tenant's own key for an upstream (sealed at rest)")
async def put_upstream_key(
    upstream: str, body: UpstreamKey, fabric: FabricDep, principal: KeyManager, tenant_id: TenantQuery = None
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    if not fabric.llm.upstreams.known(upstream):
        raise InvalidRequest(
            f"no upstream {upstream!r} is configured (AGENT_FABRIC_LLM_UPSTREAMS)", code="unknown_upstream"
        )
    await fabric.llm.upstreams.set_tenant_key(tenant, upstream, body.api_key.get_secret_value(), principal.subject)
    _audit(fabric, principal, tenant, "llm.upstream_key.set", {"upstream": upstream})
    return JSONResponse({"tenant_id": tenant, "upstream": upstream, "set": True})


@router.delete("/upstream-keys/{upstream}", summary="Remove the tenant's key for an upstream")
async def delete_upstream_key(
    upstream: str, fabric: FabricDep, principal: KeyManager, tenant_id: TenantQuery = None
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    if not await fabric.llm.upstreams.delete_tenant_key(tenant, upstream):
        raise NotFound(f"tenant {tenant!r} has no key for upstream {upstream!r}")
    _audit(fabric, principal, tenant, "llm.upstream_key.delete", {"upstream": upstream})
    return JSONResponse({"tenant_id": tenant, "upstream": upstream, "set": False})


@router.get("/calls", summary="Metered calls of the tenant, newest first (or of one task)")
async def list_calls(
    fabric: FabricDep,
    principal: BudgetViewer,
    tenant_id: TenantQuery = None,
    job_id: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    query = select(llm_calls).where(llm_calls.c.tenant_id == tenant)
    if job_id is not None:
        query = query.where(llm_calls.c.job_id == job_id)
    async with fabric.engine.connect() as conn:
        rows = (await conn.execute(query.order_by(llm_calls.c.created_at.desc()).limit(limit))).mappings().all()
    return JSONResponse(jsonable_encoder({"items": [dict(r) for r in rows]}))

"""/api/v1/auth: API keys, their exchange for short-lived JWTs, refresh, revocation, custom roles.

Machine credentials only: no passwords, no e-mail, no human sign-up flows.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent_fabric.inbound.api.deps import FabricDep
from agent_fabric.security import roles
from agent_fabric.security.deps import public, require, tenant_scope
from agent_fabric.security.roles import BUILTIN_ROLES
from agent_fabric.security.tokens import Principal
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

KeyManager = Annotated[Principal, Depends(require(roles.KEYS_MANAGE))]
RoleManager = Annotated[Principal, Depends(require(roles.ROLES_MANAGE))]
Exchange = Depends(public("exchanges an API key or a refresh token for a JWT"))


RoleName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{1,63}$", description="Lower-case role name.")]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=128)
    role: str = Field(..., min_length=1, max_length=64)
    tenant_id: str | None = Field(None, pattern=TENANT_ID_PATTERN)
    ttl_days: int | None = Field(None, ge=1, le=3650)


class KeyExchange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: str = Field(..., min_length=8, max_length=256)


class Refresh(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(..., min_length=8, max_length=256)


class Revocation(BaseModel):
    """One of `jti` (admin) or `token` (anyone with keys:manage, for a token of their tenant)."""

    model_config = ConfigDict(extra="forbid")
    jti: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    token: str | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="The token itself: proves whose it is, and gives its jti and exp.",
    )
    expires_at: int | None = Field(
        None,
        ge=0,
        le=253_402_300_799,
        description="The token's exp (epoch seconds), so the entry can be forgotten after it.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> Revocation:
        if (self.jti is None) == (self.token is None):
            raise ValueError("give exactly one of `jti` and `token`")
        return self


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permissions: list[str] = Field(..., max_length=64)


@router.post("/keys", status_code=201, summary="Create an API key (the secret is shown once)")
async def create_key(body: NewKey, fabric: FabricDep, actor: KeyManager) -> dict[str, Any]:
    return await fabric.credentials.create_key(
        actor, name=body.name, role=body.role, tenant_id=body.tenant_id, ttl_days=body.ttl_days
    )


@router.get("/keys", summary="List API keys (never their secrets)")
async def list_keys(
    fabric: FabricDep, actor: KeyManager, tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN)] = None
) -> dict[str, Any]:
    return {"items": await fabric.credentials.list_keys(tenant_scope(actor, tenant_id))}


@router.delete("/keys/{key_id}", status_code=204, summary="Revoke an API key and every token exchanged for it")
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")], fabric: FabricDep, actor: KeyManager
) -> Response:
    await fabric.credentials.revoke_key(actor, key_id)
    return Response(status_code=204)


@router.post("/token", summary="Exchange an API key for a short-lived JWT and a refresh token", dependencies=[Exchange])
async def exchange(body: KeyExchange, fabric: FabricDep) -> dict[str, Any]:
    return (await fabric.credentials.exchange(body.api_key)).view()


@router.post("/refresh", summary="Spend a refresh token for a new pair", dependencies=[Exchange])
async def refresh(body: Refresh, fabric: FabricDep) -> dict[str, Any]:
    return (await fabric.credentials.refresh(body.refresh_token)).view()


@router.post("/revocations", status_code=204, summary="Revoke one token by its jti (all replicas, at once)")
async def revoke_token(body: Revocation, fabric: FabricDep, actor: KeyManager) -> Response:
    await fabric.credentials.revoke_token(actor, body.jti, body.expires_at, body.token)
    return Response(status_code=204)


@router.get("/roles", summary="Builtin and custom roles with their permissions")
async def list_roles(fabric: FabricDep, actor: KeyManager) -> dict[str, Any]:
    builtin = [{"name": n, "permissions": sorted(p), "builtin": True} for n, p in BUILTIN_ROLES.items()]
    custom = [{"name": n, "permissions": sorted(p), "builtin": False} for n, p in fabric.access.custom_roles.items()]
    return {"items": builtin + custom}


@router.put("/roles/{name}", summary="Define or change a custom role (a permission set)")
async def put_role(name: RoleName, body: RoleBody, fabric: FabricDep, actor: RoleManager) -> dict[str, Any]:
    return await fabric.credentials.put_role(actor, name, body.permissions)


@router.delete("/roles/{name}", status_code=204, summary="Delete a custom role")
async def delete_role(name: RoleName, fabric: FabricDep, actor: RoleManager) -> Response:
    await fabric.credentials.delete_role(actor, name)
    return Response(status_code=204)

"""/api/v1/config/{tenant_id}: a tenant's integration settings, validated, versioned, applied live."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from agent_fabric.admission.budget_reports import TENANT_ENTITY
from agent_fabric.audit.entries import AuditEntry, append
from agent_fabric.errors import InvalidDocument, InvalidRequest, field_errors
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.deps import ConfigEditor, ConfigViewer, FabricDep, mode_headers
from agent_fabric.security.deps import tenant_scope
from agent_fabric.storage.documents import CONFIG, StoredDoc
from agent_fabric.tasks import TENANT_ID_PATTERN
from agent_fabric.tenants import TenantConfig

router = APIRouter(prefix="/api/v1/config", tags=["config"])

TenantPath = Annotated[str, Path(pattern=TENANT_ID_PATTERN)]


def validate_config(body: Any) -> TenantConfig:
    try:
        return TenantConfig.model_validate(body)
    except ValidationError as exc:
        detail, errors = field_errors(exc.errors(), root="config")
        raise InvalidDocument(f"configuration refused: {detail}", code="invalid_config", errors=errors) from None


async def config_view(fabric: Fabric, tenant_id: str) -> dict[str, Any]:
    doc = await fabric.governance.docs.get(CONFIG, tenant_id)
    tenants = fabric.governance.tenants
    return {
        "tenant_id": tenant_id,
        "version": doc.version if doc else 0,
        "updated_at": doc.at if doc else None,
        "updated_by": doc.by if doc else None,
        "mode": tenants.mode_for(tenant_id),
        "config": tenants.config_for(tenant_id).model_dump(mode="json"),
        "budget": await fabric.governance.budgets.get_usage(tenant_id, TENANT_ENTITY),
    }


async def store_config(
    fabric: Fabric, tenant_id: str, config: TenantConfig, actor: str, expected_version: int | None
) -> StoredDoc:
    """One transaction: the new version, the tenant budget it sets, the audit entry. Then live."""
    gov = fabric.governance
    body = config.model_dump(mode="json")
    async with fabric.engine.begin() as conn:
        doc = await gov.docs.put(
            conn,
            kind=CONFIG,
            doc_id=tenant_id,
            tenant_id=tenant_id,
            body=body,
            actor=actor,
            expected_version=expected_version,
        )
        if config.budget is not None:
            await gov.budgets.configure(conn, tenant_id, TENANT_ENTITY, config.budget, actor=actor)
        await append(
            conn,
            AuditEntry(
                "config.updated",
                actor,
                tenant_id,
                config.mode or gov.tenants.mode_for(tenant_id),
                request={"config": body},
                response={"version": doc.version},
            ),
        )
    gov.tenants.apply(tenant_id, doc.version, config)
    await gov.control.announce("config")
    if config.budget is not None:
        await gov.budgets.applied()
    return doc


@router.get("/{tenant_id}", summary="A tenant's configuration, mode and budget")
async def get_config(tenant_id: TenantPath, fabric: FabricDep, principal: ConfigViewer) -> JSONResponse:
    tenant_scope(principal, tenant_id)
    return JSONResponse(jsonable_encoder(await config_view(fabric, tenant_id)), headers=mode_headers(fabric, tenant_id))


@router.put("/{tenant_id}", summary="Replace a tenant's configuration (validated, versioned, live everywhere)")
async def put_config(
    tenant_id: TenantPath,
    fabric: FabricDep,
    principal: ConfigEditor,
    payload: Annotated[dict[str, Any], Body(description="{mode, agent_zero: {...}, budget: {...}}")],
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    tenant_scope(principal, tenant_id)
    config = validate_config(payload)
    expected = None
    if if_match is not None:
        if not if_match.strip('" ').isdigit():
            raise InvalidRequest("If-Match carries the configuration version you read", code="invalid_if_match")
        expected = int(if_match.strip('" '))
    await store_config(fabric, tenant_id, config, principal.subject, expected)
    return JSONResponse(jsonable_encoder(await config_view(fabric, tenant_id)), headers=mode_headers(fabric, tenant_id))


@router.get("/{tenant_id}/history", summary="Every version of a tenant's configuration, newest first")
async def config_history(
    tenant_id: TenantPath,
    fabric: FabricDep,
    principal: ConfigViewer,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    tenant_scope(principal, tenant_id)
    history = await fabric.governance.docs.history(CONFIG, tenant_id, limit)
    return {"tenant_id": tenant_id, "versions": [d.view() for d in history]}

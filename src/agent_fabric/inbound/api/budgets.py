"""/api/v1/budgets: usage per tenant, agent and user, limits, and reports with projections."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from agent_fabric.admission.budget_config import BudgetConfig
from agent_fabric.admission.budget_reports import parse_entity
from agent_fabric.errors import InvalidRequest
from agent_fabric.inbound.api.deps import BudgetEditor, BudgetViewer, FabricDep, Offset, mode_headers, tenant_required
from agent_fabric.security.deps import tenant_scope
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/budgets", tags=["budgets"])

Entity = Annotated[str, Path(description="'tenant', 'agent:<agent>' or 'user:<user>' within the tenant.")]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")]


def entity_of(text: str) -> str:
    try:
        return parse_entity(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_entity") from None


def period_of(text: str) -> str | date:
    if text in ("current", "previous"):
        return text
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"period is current, previous or a date (YYYY-MM-DD) inside the period; got {text!r}",
            code="invalid_period",
        ) from None


@router.get("", summary="Every budget of a tenant (or of all tenants, for admins)")
async def list_budgets(
    fabric: FabricDep,
    principal: BudgetViewer,
    tenant_id: TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    items = await fabric.governance.budgets.list_budgets(tenant_scope(principal, tenant_id), limit, offset)
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/{entity}", summary="A budget: limits, usage, reservations, projection to the period end")
async def get_budget(
    entity: Entity, fabric: FabricDep, principal: BudgetViewer, tenant_id: TenantQuery = None
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    report = await fabric.governance.budgets.get_usage(tenant, entity_of(entity))
    return JSONResponse(jsonable_encoder(report), headers=mode_headers(fabric, tenant))


@router.get("/{entity}/usage", summary="Usage in the current, previous or a given period")
async def budget_usage(
    entity: Entity,
    fabric: FabricDep,
    principal: BudgetViewer,
    tenant_id: TenantQuery = None,
    period: Annotated[str, Query(description="current, previous, or YYYY-MM-DD")] = "current",
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    report = await fabric.governance.budgets.get_usage(tenant, entity_of(entity), period_of(period))
    return JSONResponse(jsonable_encoder(report), headers=mode_headers(fabric, tenant))


@router.put("/{entity}", summary="Set a budget's limits, period, carryover and alert threshold")
async def put_budget(
    entity: Entity, config: BudgetConfig, fabric: FabricDep, principal: BudgetEditor, tenant_id: TenantQuery = None
) -> JSONResponse:
    tenant = tenant_required(principal, tenant_id)
    report = await fabric.governance.budgets.update(tenant, entity_of(entity), config, actor=principal.subject)
    return JSONResponse(jsonable_encoder(report), headers=mode_headers(fabric, tenant))

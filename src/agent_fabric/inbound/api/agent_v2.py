"""/api/v2/agent/budget, /audit and /config: the POD administrator's view (seed 000, req. 5-7, 10).

POD administrators of that POD (tenant) or admins only (see inbound/api/pod.py). Every response
carries the tenant's mode, in the body and in the X-Fabric-Mode header.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.admission.budget_config import BudgetConfig
from agent_fabric.admission.budget_math import Period
from agent_fabric.admission.budget_reports import TENANT_ENTITY
from agent_fabric.audit.store import AuditQuery
from agent_fabric.inbound.api.audit import audit_page
from agent_fabric.inbound.api.config import config_view
from agent_fabric.inbound.api.pod import Pod, PodCall
from agent_fabric.storage.column_bounds import MAX_BIGINT

router = APIRouter(prefix="/api/v2/agent", tags=["agent-v2"])


class BudgetPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit_usd: float | None = Field(None, ge=0, description="Cost limit per period.")
    reset_period: Period | None = None
    carryover: bool | None = None
    alert_threshold_percent: float | None = Field(None, gt=0, le=100)
    max_tokens: int | None = Field(None, ge=0)
    max_compute_seconds: float | None = Field(None, ge=0)


async def _budget_view(pod: PodCall) -> JSONResponse:
    report = await pod.fabric.governance.budgets.get_usage(pod.tenant_id, TENANT_ENTITY)
    thresholds = [50.0, 75.0, 90.0]
    body = {
        "pod_id": pod.tenant_id,
        "limit_usd": report["limits"]["cost_usd"],
        "used_usd": report["used"]["cost_usd"],
        "reserved_usd": report["reserved"]["cost_usd"],
        "projected_usd": report["projected"]["cost_usd"],
        "reset_period": report["period"],
        "last_reset_at": report["period_start"],
        "next_reset_at": report["period_end"],
        "carryover": report["carryover"],
        "alert_threshold_percent": report["alert_threshold_percent"],
        "alerts": {f"{t:g}": t in report["alerts_sent"] for t in thresholds},
        "enforced": report["enforced"],
        "budget": report,
    }
    return pod.reply(body)


@router.get("/budget", summary="The POD's budget status")
async def get_budget(pod: Pod) -> JSONResponse:
    return await _budget_view(pod)


@router.patch("/budget", summary="Update the POD's budget limits")
async def patch_budget(patch: BudgetPatch, pod: Pod) -> JSONResponse:
    budgets = pod.fabric.governance.budgets
    current = await budgets.config_of(pod.tenant_id, TENANT_ENTITY) or BudgetConfig()
    changes = patch.model_dump(exclude_unset=True)
    renamed = {"limit_usd": "max_cost_usd", "reset_period": "period"}
    merged = BudgetConfig.model_validate({**current.model_dump(), **{renamed.get(k, k): v for k, v in changes.items()}})
    await budgets.update(pod.tenant_id, TENANT_ENTITY, merged, actor=pod.actor)
    return await _budget_view(pod)


@router.get("/audit", summary="The POD's audit trail")
async def get_audit(
    pod: Pod,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
) -> JSONResponse:
    page: dict[str, Any] = await audit_page(
        pod.fabric,
        AuditQuery(
            tenant_id=pod.tenant_id,
            actor=actor,
            action=action,
            session_id=session_id,
            since=since,
            until=until,
            before=cursor,
            limit=limit,
        ),
    )
    return pod.reply(page)


@router.get("/config", summary="The POD's integration configuration")
async def get_config(pod: Pod) -> JSONResponse:
    return pod.reply(await config_view(pod.fabric, pod.tenant_id))

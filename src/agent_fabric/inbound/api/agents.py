"""/api/v1/agents/{agent}/pending: an agent's tasks not started yet (AgentScheduler.list_pending)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent_fabric.inbound.api.deps import FabricDep, Reader
from agent_fabric.security.deps import tenant_scope
from agent_fabric.tasks import DEFAULT_TENANT, TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


@router.get("/{agent:path}/pending", summary="An agent's queued tasks, oldest first")
async def list_pending(
    agent: str,
    fabric: FabricDep,
    principal: Reader,
    tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """`agent` is the agent's label: its agent_id, else `<runtime>` or `<runtime>/<profile>`."""
    tenant = tenant_scope(principal, tenant_id) or DEFAULT_TENANT
    specs = await fabric.scheduler.list_pending(agent, tenant_id=tenant, limit=limit)
    return {
        "agent": agent,
        "tenant_id": tenant,
        "items": [
            {"job_id": s.job_id, "priority": s.priority.value, "type": s.task.type, "depends_on": s.depends_on}
            for s in specs
        ],
    }

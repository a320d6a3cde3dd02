"""/api/v1/audit: the audit trail, filtered and paged (newest first; `next` is the next page's cursor)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from agent_fabric.audit.store import AuditQuery
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.deps import AuditViewer, FabricDep
from agent_fabric.security.deps import tenant_scope
from agent_fabric.storage.column_bounds import MAX_BIGINT
from agent_fabric.tasks import TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


async def audit_page(fabric: Fabric, query: AuditQuery) -> dict[str, Any]:
    items, cursor = await fabric.governance.audit_store.query(query)
    return {"items": items, "next": cursor}


@router.get("", summary="Query the audit trail")
async def query_audit(
    fabric: FabricDep,
    principal: AuditViewer,
    tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64, description="Exact, or a prefix ending in '.'")] = None,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query(description="From this time (inclusive, ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Before this time (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description="`next` from the previous page.")] = None,
) -> dict[str, Any]:
    query = AuditQuery(
        tenant_id=tenant_scope(principal, tenant_id),
        actor=actor,
        action=action,
        session_id=session_id,
        since=since,
        until=until,
        before=cursor,
        limit=limit,
    )
    return await audit_page(fabric, query)

"""/api/v1/queues: unfinished work by tenant, priority and status; JetStream lag per class (admins).

What the console's queue view shows. Tenant-bound roles see their own tenant's counts only; the
JetStream consumers are shared by every tenant, so their lag is shown to admins alone.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from agent_fabric import names
from agent_fabric.inbound.api.deps import FabricDep, Reader
from agent_fabric.security.deps import tenant_scope
from agent_fabric.storage.tables import tasks
from agent_fabric.tasks import TENANT_ID_PATTERN, TaskStatus

router = APIRouter(prefix="/api/v1/queues", tags=["tasks"])

OPEN_STATUSES = [s.value for s in TaskStatus if not s.is_terminal]


@router.get("", summary="Unfinished tasks by tenant, priority and status; consumer lag per class (admins)")
async def queues(
    fabric: FabricDep,
    principal: Reader,
    tenant_id: Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: one tenant.")] = None,
) -> dict[str, Any]:
    scope = tenant_scope(principal, tenant_id)
    stmt = (
        select(tasks.c.tenant_id, tasks.c.priority, tasks.c.status, func.count())
        .where(tasks.c.status.in_(OPEN_STATUSES))
        .group_by(tasks.c.tenant_id, tasks.c.priority, tasks.c.status)
        .order_by(tasks.c.tenant_id, tasks.c.priority, tasks.c.status)
    )
    if scope is not None:
        stmt = stmt.where(tasks.c.tenant_id == scope)
    async with fabric.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    body: dict[str, Any] = {
        "items": [{"tenant_id": t, "priority": p, "status": s, "count": n} for t, p, s, n in rows],
    }
    if principal.tenant_id is None:
        body["consumers"] = await _consumer_lag(fabric)
    return body


async def _consumer_lag(fabric: FabricDep) -> list[dict[str, Any]]:
    found = []
    for priority in names.PRIORITIES:
        name = names.consumer_name(priority)
        with contextlib.suppress(Exception):  # a consumer not created yet has no lag to show
            info = await fabric.js.consumer_info(names.TASK_STREAM, name)
            found.append(
                {
                    "priority": priority,
                    "consumer": name,
                    "pending": info.num_pending,
                    "ack_pending": info.num_ack_pending,
                }
            )
    return found

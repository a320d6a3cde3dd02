"""Named dependency types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from agent_fabric import names
from agent_fabric.errors import Forbidden, InvalidRequest
from agent_fabric.fabric import Fabric
from agent_fabric.security import roles
from agent_fabric.security.deps import require, tenant_scope
from agent_fabric.security.tokens import Principal


async def get_fabric(request: Request) -> Fabric:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    fabric: Fabric = request.app.state.fabric
    return fabric


FabricDep = Annotated[Fabric, Depends(get_fabric)]
Submitter = Annotated[Principal, Depends(require(roles.TASKS_SUBMIT))]
TaskCanceller = Annotated[Principal, Depends(require(roles.TASKS_CANCEL))]
Reader = Annotated[Principal, Depends(require(roles.TASKS_READ))]
PolicyViewer = Annotated[Principal, Depends(require(roles.POLICIES_READ))]
PolicyEditor = Annotated[Principal, Depends(require(roles.POLICIES_WRITE))]
PolicyAsker = Annotated[Principal, Depends(require(roles.POLICIES_CHECK))]
ApprovalViewer = Annotated[Principal, Depends(require(roles.APPROVALS_READ))]
ApprovalRequester = Annotated[Principal, Depends(require(roles.APPROVALS_REQUEST))]
ApprovalDecider = Annotated[Principal, Depends(require(roles.APPROVALS_DECIDE))]
BudgetViewer = Annotated[Principal, Depends(require(roles.BUDGETS_READ))]
BudgetEditor = Annotated[Principal, Depends(require(roles.BUDGETS_WRITE))]
AuditViewer = Annotated[Principal, Depends(require(roles.AUDIT_READ))]
ConfigViewer = Annotated[Principal, Depends(require(roles.CONFIG_READ))]
ConfigEditor = Annotated[Principal, Depends(require(roles.CONFIG_WRITE))]
PodAdmin = Annotated[Principal, Depends(require(roles.POD_ADMIN))]


def tenant_required(principal: Principal, tenant_id: str | None) -> str:
    """The one tenant a request acts in: a tenant-bound caller's own; an admin must name it."""
    scope = tenant_scope(principal, tenant_id)
    if scope is None:
        raise InvalidRequest("name the tenant with ?tenant_id= (admins act in every tenant)", code="tenant_required")
    return scope


def pod_tenant(fabric: Fabric, principal: Principal, tenant_id: str | None) -> str:
    """The tenant of an /api/v2/agent request; in LIVE mode the token must prove MFA (`amr`)."""
    tenant = tenant_required(principal, tenant_id)
    if fabric.governance.tenants.mode_for(tenant) == "LIVE" and "mfa" not in principal.amr:
        raise Forbidden(
            f"tenant {tenant!r} is LIVE: Agent Zero access needs a token whose amr claim includes mfa",
            code="mfa_required",
        )
    return tenant


def mode_headers(fabric: Fabric, tenant_id: str) -> dict[str, str]:
    return {names.MODE_HEADER: fabric.governance.tenants.mode_for(tenant_id)}


# Paging offsets are bounded: past this, keyset paging (cursors) is the tool, and an unbounded
# integer would overflow the database's.
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")]

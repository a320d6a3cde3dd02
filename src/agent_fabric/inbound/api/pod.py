"""What every /api/v2/agent request starts with: who, which POD, which mode, and its audit entry.

Seed 000 (req. 4, 6, 7): pod_admin of the POD (or admin) only; MFA when the POD is LIVE; every
request is written to the audit trail before anything is sent to Agent Zero; the POD's mode is in
every response body (`mode`) and in the X-Fabric-Mode header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from agent_fabric import names
from agent_fabric.audit.entries import Caller
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.deps import FabricDep, PodAdmin, pod_tenant
from agent_fabric.security.tokens import Principal
from agent_fabric.settings import Mode
from agent_fabric.tasks import TENANT_ID_PATTERN

TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which POD.")]


@dataclass(frozen=True, slots=True)
class PodCall:
    """One authorised /api/v2/agent request."""

    fabric: Fabric
    principal: Principal
    tenant_id: str
    mode: Mode

    @property
    def actor(self) -> str:
        return self.principal.subject

    @property
    def caller(self) -> Caller:
        return Caller(self.actor, self.tenant_id, self.mode)

    def reply(self, body: dict[str, Any], status_code: int = 200) -> JSONResponse:
        """The body with the POD's mode in it, and the X-Fabric-Mode header."""
        return JSONResponse(
            jsonable_encoder({**body, "mode": self.mode}),
            status_code=status_code,
            headers={names.MODE_HEADER: self.mode},
        )

    def audit(
        self,
        action: str,
        *,
        request: Any = None,
        response: Any = None,
        session_id: str | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """An entry in the POD's audit trail (batched; flushed or spooled, never dropped)."""
        self.fabric.governance.audit.record(
            self.caller.entry(action, request=request, response=response, session_id=session_id, cost_usd=cost_usd)
        )


async def pod_call(request: Request, fabric: FabricDep, principal: PodAdmin, tenant_id: TenantQuery = None) -> PodCall:
    tenant = pod_tenant(fabric, principal, tenant_id)
    call = PodCall(fabric, principal, tenant, fabric.governance.tenants.mode_for(tenant))
    # Before the handler runs, so a request that reaches Agent Zero is always on record.
    call.audit(
        "agent_api.request",
        request={"method": request.method, "path": request.url.path, "query": dict(request.query_params)},
        session_id=request.path_params.get("session_id"),
    )
    return call


Pod = Annotated[PodCall, Depends(pod_call)]

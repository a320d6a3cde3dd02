"""/api/v1/agents: the agents the fabric manages (agents/): registry, registration with one-time
discovery tokens, configuration with history, what the registry knows of health, metrics and logs;
and an agent's queued tasks (`.../pending`, AgentScheduler.list_pending).

Access: admin every agent; pod_admin its tenant's; viewer reads in its tenant; an agent reads its
own record and configuration and may change its own configuration. Another tenant's agent does
not exist (404). Catalogue rows (discovered packages, no tenant yet) are readable by all and
changed by admins only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_fabric.agents.config import parse_layer
from agent_fabric.agents.credentials import agent_id_of, agent_key_ids
from agent_fabric.agents.directory import CONTROL_TOPIC as DIRECTORY_TOPIC
from agent_fabric.agents.manifest import NAME_PATTERN, TYPE_PATTERN
from agent_fabric.agents.registry import AgentRecord
from agent_fabric.agents.semver import parse_version
from agent_fabric.agents.states import AgentStatus
from agent_fabric.errors import Forbidden, InvalidRequest
from agent_fabric.fabric import Fabric
from agent_fabric.inbound.api.deps import FabricDep, Offset, Reader
from agent_fabric.security import roles
from agent_fabric.security.deps import public, require, tenant_scope
from agent_fabric.security.tokens import Principal
from agent_fabric.tasks import DEFAULT_TENANT, TENANT_ID_PATTERN

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])

AgentReader = Annotated[Principal, Depends(require(roles.AGENTS_READ))]
AgentConfigurer = Annotated[Principal, Depends(require(roles.AGENTS_CONFIGURE))]
AgentWriter = Annotated[Principal, Depends(require(roles.AGENTS_WRITE))]
AgentDiscoverer = Annotated[Principal, Depends(require(roles.AGENTS_DISCOVER))]
Registration = Depends(
    public("an agent registers with its one-time discovery token; operators registering directly send a bearer token")
)
AgentId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,96}$", description="`{agent_type}-{uuid}`.")]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_ID_PATTERN, description="Admins: which tenant.")]


class NewAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_name: str = Field(..., pattern=NAME_PATTERN.pattern)
    agent_version: str = Field(..., max_length=64)
    agent_type: str = Field(..., pattern=TYPE_PATTERN.pattern)
    discovery_token: str | None = Field(None, max_length=200, description="One-time token; else a bearer token.")
    tenant_id: str | None = Field(None, pattern=TENANT_ID_PATTERN, description="Direct registration: the tenant.")
    description: str | None = Field(None, max_length=2000)

    @field_validator("agent_version")
    @classmethod
    def _semver(cls, value: str) -> str:
        parse_version(value)  # ValueError names the problem
        return value


class AgentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=2000)
    labels: dict[str, Annotated[str, Field(max_length=256)]] | None = Field(None, max_length=64)


class NewDiscoveryToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str | None = Field(None, pattern=TENANT_ID_PATTERN, description="Admins: the tenant it registers in.")
    ttl_seconds: int | None = Field(None, ge=30, le=86_400)
    note: str | None = Field(None, max_length=255)


async def _visible(fabric: Fabric, principal: Principal, agent_id: str) -> AgentRecord:
    record = await fabric.agents.registry.visible(agent_id, principal.tenant_id)
    own = agent_id_of(principal)
    if principal.role == "agent" and own != record.id:
        raise Forbidden("an agent reads and configures only its own record")
    return record


def _changeable(principal: Principal, record: AgentRecord) -> None:
    if record.tenant_id is None and principal.tenant_id is not None:
        raise Forbidden("discovered packages belong to the whole fabric: admins change them")


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip('" ')
    if not text.isdigit():
        raise InvalidRequest("If-Match carries the version you read", code="invalid_if_match")
    return int(text)


async def _directory_changed(fabric: Fabric, agent_id: str, record: AgentRecord | None) -> None:
    """Admission here knows at once; other replicas on the control announcement."""
    if record is None or record.tenant_id is None:
        fabric.agents.directory.remove(agent_id)
    else:
        fabric.agents.directory.add(agent_id, record.tenant_id, record.runtime)
    await fabric.governance.control.announce(DIRECTORY_TOPIC)


def _mode(fabric: Fabric, tenant_id: str | None) -> str:
    return fabric.governance.tenants.mode_for(tenant_id)


@router.get("", summary="Agents: filter by status, type and tenant; paged")
async def list_agents(
    fabric: FabricDep,
    principal: AgentReader,
    status: Annotated[AgentStatus | None, Query()] = None,
    agent_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN.pattern)] = None,
    tenant_id: TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    scope = tenant_scope(principal, tenant_id)
    own = agent_id_of(principal)
    if principal.role == "agent":
        record = await fabric.agents.registry.get(own) if own else None
        items = [record] if record is not None and record.tenant_id == scope else []
        return {"items": [r.view() for r in items], "total": len(items), "limit": limit, "offset": 0}
    value = status.value if status else None
    items, total = await fabric.agents.registry.list_agents(
        tenant_id=scope, status=value, agent_type=agent_type, limit=limit, offset=offset
    )
    return {"items": [r.view() for r in items], "total": total, "limit": limit, "offset": offset}


@router.post("", status_code=201, summary="Register an agent (discovery token, or an operator directly)")
async def register_agent(request: Request, fabric: FabricDep, body: NewAgent, _: None = Registration) -> JSONResponse:
    """The answer carries the agent's credentials; it is the only time they are shown."""
    registrar = fabric.agents.registrar
    common = {"name": body.agent_name, "version": body.agent_version, "agent_type": body.agent_type}
    if body.discovery_token is not None:
        if body.tenant_id is not None:
            raise InvalidRequest("a discovery token names the tenant; leave tenant_id out", code="tenant_from_token")
        done = await registrar.register(
            **common,
            actor="discovery-token",
            discovery_token=body.discovery_token,
            description=body.description,
        )
    else:
        principal = await require(roles.AGENTS_WRITE)(request)
        tenant = tenant_scope(principal, body.tenant_id)
        if tenant is None:
            raise InvalidRequest("name the tenant the agent registers in (tenant_id)", code="tenant_required")
        done = await registrar.register(
            **common, actor=principal.subject, tenant_id=tenant, description=body.description
        )
    await _directory_changed(fabric, done.agent.id, done.agent)
    return JSONResponse(jsonable_encoder(done.view()), status_code=201)


@router.post("/discovery-tokens", status_code=201, summary="Mint a one-time discovery token (shown once)")
async def create_discovery_token(fabric: FabricDep, principal: AgentWriter, body: NewDiscoveryToken) -> dict[str, Any]:
    tenant = tenant_scope(principal, body.tenant_id)
    if tenant is None:
        raise InvalidRequest("name the tenant the token registers agents in (tenant_id)", code="tenant_required")
    return await fabric.agents.tokens.mint(
        principal, tenant, ttl_seconds=body.ttl_seconds, note=body.note, mode=_mode(fabric, tenant)
    )


@router.get("/discovery-tokens", summary="Discovery tokens (never their secrets)")
async def list_discovery_tokens(
    fabric: FabricDep, principal: AgentWriter, tenant_id: TenantQuery = None
) -> dict[str, Any]:
    return {"items": await fabric.agents.tokens.list_tokens(tenant_scope(principal, tenant_id))}


@router.post("/discover", summary="Scan the agents directories now; every package with its problems")
async def discover(fabric: FabricDep, principal: AgentDiscoverer) -> dict[str, Any]:
    return (await fabric.agents.discovery.scan()).view()


@router.get("/discover", summary="The last scan of the agents directories")
async def last_discovery(fabric: FabricDep, principal: AgentDiscoverer) -> dict[str, Any]:
    report = fabric.agents.discovery.last_report
    return report.view() if report else {"scanned_at": None, "dirs": [str(d) for d in fabric.agents.discovery.dirs]}


@router.get("/{agent_id}", summary="An agent and its lifecycle history")
async def get_agent(agent_id: AgentId, fabric: FabricDep, principal: AgentReader) -> JSONResponse:
    record = await _visible(fabric, principal, agent_id)
    history = await fabric.agents.registry.history(agent_id)
    body = {**record.view(), "history": [h.view() for h in history]}
    return JSONResponse(jsonable_encoder(body), headers={"ETag": f'"{record.revision}"'})


@router.put("/{agent_id}", summary="Change an agent's description or labels (If-Match: its revision)")
async def change_agent(
    agent_id: AgentId,
    fabric: FabricDep,
    principal: AgentWriter,
    body: AgentChange,
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    record = await fabric.agents.registry.visible(agent_id, principal.tenant_id)
    _changeable(principal, record)
    fresh = await fabric.agents.registry.update(
        agent_id,
        tenant_id=principal.tenant_id,
        actor=principal.subject,
        description=body.description,
        labels=body.labels,
        expected_revision=_if_match(if_match),
    )
    return JSONResponse(jsonable_encoder(fresh.view()), headers={"ETag": f'"{fresh.revision}"'})


@router.delete("/{agent_id}", status_code=204, summary="Delete an agent that is not running; its credentials end")
async def delete_agent(agent_id: AgentId, fabric: FabricDep, principal: AgentWriter) -> Response:
    record = await fabric.agents.registry.visible(agent_id, principal.tenant_id)
    _changeable(principal, record)
    await fabric.agents.registry.delete(agent_id, tenant_id=principal.tenant_id, actor=principal.subject)
    if record.tenant_id is not None:
        async with fabric.engine.connect() as conn:
            keys = await agent_key_ids(conn, agent_id, record.tenant_id)
        for key_id in keys:  # revoked on every replica, JWTs exchanged for the key included
            await fabric.credentials.revoke_key(principal, key_id)
        await fabric.agents.nats_users.refresh()
    await _directory_changed(fabric, agent_id, None)
    return Response(status_code=204)


@router.get("/{agent_id}/config", summary="Effective configuration: each key's value and the layer it came from")
async def get_agent_config(agent_id: AgentId, fabric: FabricDep, principal: AgentReader) -> JSONResponse:
    record = await _visible(fabric, principal, agent_id)
    effective = await fabric.agents.configs.effective(record)
    return JSONResponse(jsonable_encoder(effective.view()), headers={"ETag": f'"{effective.version}"'})


@router.put("/{agent_id}/config", summary="Replace the agent's own configuration layer (validated, versioned, live)")
async def put_agent_config(
    agent_id: AgentId,
    fabric: FabricDep,
    principal: AgentConfigurer,
    payload: Annotated[
        dict[str, Any], Body(description="The agent layer: {log_level, heartbeat_interval_seconds, ...}")
    ],
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    record = await _visible(fabric, principal, agent_id)
    config = parse_layer(payload)
    before = await fabric.agents.configs.effective(record)
    effective = await fabric.agents.configs.put(
        record,
        config,
        actor=principal.subject,
        mode=_mode(fabric, record.tenant_id),
        expected_version=_if_match(if_match),
    )
    topics = ("subscribed_topics", "findings_topic")
    if any(before.values.get(k) != effective.values.get(k) for k in topics):
        await fabric.agents.nats_users.refresh()  # the agent's NATS permissions follow its topics
    fabric.governance.relay.kick()
    return JSONResponse(jsonable_encoder(effective.view()), headers={"ETag": f'"{effective.version}"'})


@router.get("/{agent_id}/config/history", summary="Every version of the agent's configuration layer, newest first")
async def agent_config_history(
    agent_id: AgentId, fabric: FabricDep, principal: AgentReader, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> dict[str, Any]:
    await _visible(fabric, principal, agent_id)
    return {"agent_id": agent_id, "versions": [d.view() for d in await fabric.agents.configs.history(agent_id, limit)]}


@router.get("/{agent_id}/health", summary="What the registry knows of the agent's health")
async def agent_health(agent_id: AgentId, fabric: FabricDep, principal: AgentReader) -> dict[str, Any]:
    record = await _visible(fabric, principal, agent_id)
    return {
        "agent_id": record.id,
        "status": record.status.value,
        "reason": record.status_reason,
        "since": record.status_changed_at,
        "source": "registry",
        # No runtime reports heartbeats to the registry (yet): say so rather than guess.
        "heartbeat": None,
    }


@router.get("/{agent_id}/metrics", summary="What the registry knows: lifecycle counts and configuration version")
async def agent_metrics(agent_id: AgentId, fabric: FabricDep, principal: AgentReader) -> dict[str, Any]:
    record = await _visible(fabric, principal, agent_id)
    history = await fabric.agents.registry.history(agent_id)
    config = await fabric.agents.configs.stored(agent_id)
    return {
        "agent_id": record.id,
        "source": "registry",
        "transitions": len(history),
        "starts": sum(1 for h in history if h.to_status == AgentStatus.RUNNING.value),
        "failures": sum(1 for h in history if h.to_status == AgentStatus.FAILED.value),
        "seconds_in_status": round((datetime.now(UTC) - record.status_changed_at).total_seconds(), 3),
        "config_version": config.version if config else 0,
    }


@router.get("/{agent_id}/logs", summary="The registry's log of the agent: its lifecycle transitions")
async def agent_logs(
    agent_id: AgentId, fabric: FabricDep, principal: AgentReader, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> dict[str, Any]:
    await _visible(fabric, principal, agent_id)
    history = (await fabric.agents.registry.history(agent_id))[-limit:]
    return {
        "agent_id": agent_id,
        "source": "registry",
        "entries": [
            {
                "at": h.at,
                "level": "ERROR" if h.to_status == AgentStatus.FAILED.value else "INFO",
                "message": f"{h.from_status or '-'} -> {h.to_status}" + (f": {h.reason}" if h.reason else ""),
                "actor": h.actor,
            }
            for h in history
        ],
    }


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

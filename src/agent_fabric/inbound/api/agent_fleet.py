"""/api/v2/agent/health, /fleet and /agents: a POD's Agent Zero fleet (seed 000 req. 1.1, 2.1, 8).

POD administrators of that POD (or admins naming it) only, audited before anything reaches Agent
Zero, the POD's mode in every body and in X-Fabric-Mode (inbound/api/pod.py). An agent of
another POD is 404 here, as if it did not exist.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agent_fabric.agent_zero.fleet_rows import ORCHESTRATOR
from agent_fabric.errors import FabricError, InvalidRequest
from agent_fabric.inbound.api.pod import Pod, PodCall

router = APIRouter(prefix="/api/v2/agent", tags=["agent-v2"])

AgentId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")]
PROFILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class SpawnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(None, pattern=PROFILE_PATTERN, description="The specialist's Agent Zero profile.")
    task_type: str | None = Field(
        None, max_length=64, description="Or the task type it is for: its profile comes from the routing table."
    )
    parent_id: str | None = Field(
        None, pattern=r"^[0-9a-f]{1,32}$", description="The agent it works under; default: the orchestrator."
    )


async def _fleet_body(pod: PodCall) -> dict[str, Any]:
    manager = pod.fabric.fleet_manager
    views = await manager.views(await manager.agents.live(pod.tenant_id))
    orchestrator = next((v for v in views if v["role"] == ORCHESTRATOR), None)
    return {
        "pod_id": pod.tenant_id,
        "started": orchestrator is not None,
        "orchestrator": orchestrator,
        "agents": views,
        "counts": dict(Counter(v["status"] for v in views)),
        "max_agents": manager.agents.max_agents(pod.tenant_id),
        "instances": [
            {"url": i.url, "status": i.status, "version": i.version} for i in manager.fleet.candidates(pod.tenant_id)
        ],
    }


def _failed(pod: PodCall, action: str, exc: FabricError, request: Any = None) -> None:
    pod.audit(action, request=request, response={"error": exc.code, "detail": exc.message})


@router.get("/health", summary="Are the POD's Agent Zero instances up (cached 30 s)")
async def health(
    pod: Pod, refresh: Annotated[bool, Query(description="Skip the cache: ask the instances now.")] = False
) -> JSONResponse:
    report = await pod.fabric.fleet_manager.health.report(pod.tenant_id, refresh=refresh)
    return pod.reply(report)


@router.get("/fleet", summary="The POD's fleet: orchestrator, specialists, their status")
async def get_fleet(pod: Pod) -> JSONResponse:
    return pod.reply(await _fleet_body(pod))


@router.post("/fleet/start", summary="Start the POD's fleet (its orchestrator); idempotent")
async def start_fleet(pod: Pod) -> JSONResponse:
    try:
        orchestrator, created = await pod.fabric.fleet_manager.agents.start(pod.tenant_id, pod.mode, pod.actor)
    except FabricError as exc:
        _failed(pod, "agent.fleet.start", exc)
        raise
    pod.audit(
        "agent.fleet.start",
        response={"orchestrator_id": orchestrator.id, "created": created, "context_id": orchestrator.context_id},
    )
    return pod.reply(await _fleet_body(pod), 201 if created else 200)


@router.post("/fleet/stop", summary="Terminate every agent of the POD's fleet")
async def stop_fleet(pod: Pod) -> JSONResponse:
    ended = await pod.fabric.fleet_manager.agents.stop(pod.tenant_id)
    pod.audit("agent.fleet.stop", response={"terminated": [a.id for a in ended]})
    return pod.reply({**await _fleet_body(pod), "terminated": [a.id for a in ended]})


@router.get("/agents", summary="The POD's fleet agents")
async def list_agents(
    pod: Pod,
    include_terminated: Annotated[bool, Query(description="Also the terminated ones, newest first.")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JSONResponse:
    records = await pod.fabric.fleet_manager.agents.listing(
        pod.tenant_id, include_terminated=include_terminated, limit=limit
    )
    return pod.reply({"pod_id": pod.tenant_id, "items": await pod.fabric.fleet_manager.views(records)})


@router.post("/agents/spawn", summary="Spawn a specialist agent under the orchestrator or another agent")
async def spawn_agent(spawn: SpawnRequest, pod: Pod) -> JSONResponse:
    asked = spawn.model_dump(exclude_none=True)
    try:
        profile = _profile_of(pod, spawn)
        record = await pod.fabric.fleet_manager.agents.spawn(
            pod.tenant_id, pod.mode, pod.actor, profile, spawn.parent_id
        )
    except FabricError as exc:
        _failed(pod, "agent.spawn", exc, asked)
        raise
    pod.audit(
        "agent.spawn",
        request=asked,
        response={"agent_id": record.id, "profile": profile, "parent_id": record.parent_id},
        session_id=record.context_id,
    )
    return pod.reply((await pod.fabric.fleet_manager.views([record]))[0], 201)


@router.get("/agents/{agent_id}", summary="One fleet agent, its status read from Agent Zero")
async def get_agent(agent_id: AgentId, pod: Pod) -> JSONResponse:
    record = await pod.fabric.fleet_manager.agents.get(pod.tenant_id, agent_id)
    return pod.reply((await pod.fabric.fleet_manager.views([record]))[0])


@router.post("/agents/{agent_id}/terminate", summary="Terminate an agent and every agent under it")
async def terminate_agent(agent_id: AgentId, pod: Pod) -> JSONResponse:
    agents = pod.fabric.fleet_manager.agents
    ended = await agents.terminate(pod.tenant_id, agent_id)
    pod.audit(
        "agent.terminate",
        request={"agent_id": agent_id},
        response={"terminated": [a.id for a in ended], "notes": {a.id: a.last_error for a in ended if a.last_error}},
    )
    record = await agents.get(pod.tenant_id, agent_id)
    return pod.reply({**(await pod.fabric.fleet_manager.views([record]))[0], "terminated": [a.id for a in ended]})


def _profile_of(pod: PodCall, spawn: SpawnRequest) -> str:
    cfg = pod.fabric.settings.agent_zero
    if spawn.profile is not None:
        profile = spawn.profile
    elif spawn.task_type is not None:
        routed = cfg.profile_routes.get(spawn.task_type)
        if routed is None:
            known = ", ".join(sorted(cfg.profile_routes))
            raise InvalidRequest(
                f"no profile is routed for task type {spawn.task_type!r} (known: {known})", code="unknown_task_type"
            )
        profile = routed
    else:
        raise InvalidRequest("name the specialist's profile, or a task_type to route one", code="profile_required")
    if profile == cfg.orchestrator_profile:
        raise InvalidRequest(
            "the orchestrator is started by POST /api/v2/agent/fleet/start", code="orchestrator_profile"
        )
    return profile

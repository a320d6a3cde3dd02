"""/api/v1/agents/{agent_id}/start|stop|restart and .../health|metrics|logs|runs: the processes of
a registered agent (agents/lifecycle.py), beside the registry's own /api/v1/agents routes.

Start, stop and restart act on this replica at once and are broadcast so every replica's
processes of the agent follow. Health, metrics and logs describe this replica's processes (each
replica runs its own); `runs` is the session history of every replica, from the database.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from agent_fabric.agents.pod_spec import agent_manifests
from agent_fabric.agents.registry import AgentRecord
from agent_fabric.errors import InvalidRequest
from agent_fabric.inbound.api.agents import AgentReader, AgentWriter, agent_health, agent_logs, agent_metrics
from agent_fabric.inbound.api.deps import FabricDep
from agent_fabric.security.deps import tenant_scope
from agent_fabric.security.tokens import Principal

router = APIRouter(prefix="/api/v1/agents", tags=["agent processes"])
AGENT_ID = r"^[A-Za-z0-9._:-]{1,96}$"


async def _agent(fabric: FabricDep, principal: Principal, agent_id: str) -> AgentRecord:
    record = await fabric.agents.registry.visible(agent_id, tenant_scope(principal, None))
    if record.tenant_id is None:
        raise InvalidRequest(
            f"agent {agent_id!r} is discovered but not registered: register it first", code="agent_not_registered"
        )
    return record


async def _runnable(fabric: FabricDep, principal: Principal, agent_id: str) -> None:
    """Start/stop/restart act on processes: an A2A agent runs elsewhere and has none."""
    record = await _agent(fabric, principal, agent_id)
    if record.runtime == "a2a":
        raise InvalidRequest(
            f"agent {agent_id!r} is an A2A agent: it runs elsewhere and the fabric starts or stops no process "
            "for it (delete it to stop using it)",
            code="not_a_process_agent",
        )


@router.post("/{agent_id}/start", status_code=status.HTTP_202_ACCEPTED, summary="Start the agent's processes")
async def start(agent_id: str, fabric: FabricDep, principal: AgentWriter) -> dict[str, Any]:
    await _runnable(fabric, principal, agent_id)
    pool = await fabric.processes.start_agent(agent_id)
    await fabric.processes.lifecycle.broadcast(agent_id, "start")
    return await _health(fabric, agent_id) or {"agent_id": agent_id, "status": pool.status}


@router.post("/{agent_id}/stop", summary="Drain and stop the agent's processes")
async def stop(
    agent_id: str,
    fabric: FabricDep,
    principal: AgentWriter,
    drain_timeout: Annotated[
        float | None, Query(ge=0, le=3600, description="Seconds a running task may finish.")
    ] = None,
) -> dict[str, Any]:
    """No new tasks; a running task finishes within drain_timeout; then SIGTERM, then SIGKILL."""
    await _runnable(fabric, principal, agent_id)
    await fabric.processes.lifecycle.broadcast(agent_id, "stop")
    await fabric.processes.stop_agent(agent_id, drain_timeout=drain_timeout)
    record = await fabric.agents.registry.get(agent_id)
    return {"agent_id": agent_id, "status": record.status.value if record else "stopped"}


@router.post("/{agent_id}/restart", status_code=status.HTTP_202_ACCEPTED, summary="Drain, stop and start again")
async def restart(agent_id: str, fabric: FabricDep, principal: AgentWriter) -> dict[str, Any]:
    await _runnable(fabric, principal, agent_id)
    await fabric.processes.lifecycle.broadcast(agent_id, "restart")
    pool = await fabric.processes.start_agent(agent_id, restart=True)
    return await _health(fabric, agent_id) or {"agent_id": agent_id, "status": pool.status}


@router.get("/{agent_id}/health", summary="The agent's status, and its processes on every replica with heartbeats")
async def health(agent_id: str, fabric: FabricDep, principal: AgentReader) -> dict[str, Any]:
    """The registry's answer (status, reason, since) when no process of the agent runs here; else
    this replica's: its status and reason, its processes (state, pid, uptime, current job, last
    heartbeat), `heartbeat` the newest, and the registry's status beside them. `replicas`: the
    agent's live processes on every replica (this one's current, the others' as last recorded,
    `stale` when their replica stopped recording)."""
    base = await agent_health(agent_id, fabric, principal)
    found = await _health(fabric, agent_id)
    replicas = {"replicas": await fabric.processes.beats.replicas(agent_id)}
    if found is None:
        # The same shape as with processes: a client polling `busy` must not meet a missing key.
        return {**base, "processes": [], "busy": 0, **replicas}
    beats = [p["last_heartbeat"] for p in found["processes"] if p["last_heartbeat"]]
    newest = max(beats, key=lambda b: str(b.get("timestamp"))) if beats else None
    # This replica's processes are the live truth here; the registry's word stays beside it.
    registry = {"registry_status": base["status"], "registry_reason": base["reason"]}
    return {**base, **found, **registry, **replicas, "source": "runtime", "heartbeat": newest}


@router.get(
    "/{agent_id}/metrics", summary="Lifecycle counts, and resource use and counters of this replica's processes"
)
async def metrics(agent_id: str, fabric: FabricDep, principal: AgentReader) -> dict[str, Any]:
    base = await agent_metrics(agent_id, fabric, principal)
    runtime = fabric.processes
    usage = await runtime.isolation.get_resource_usage(agent_id)
    pool = runtime.lifecycle.pools.get(agent_id)
    return {
        **base,
        **usage,
        "status": pool.status if pool else None,
        "restarts": pool.restarts if pool else 0,
        "process_failures": pool.failures_total if pool else 0,
        "tasks_done": pool.tasks_total if pool else 0,
    }


@router.get("/{agent_id}/logs", summary="Lifecycle transitions, and what the agent's processes wrote (masked)")
async def logs(
    agent_id: str,
    fabric: FabricDep,
    principal: AgentReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    process: Annotated[str | None, Query(max_length=160, description="One process, e.g. <agent_id>/3.")] = None,
) -> dict[str, Any]:
    """`entries`: the registry's lifecycle log; `items`: this replica's captured stderr (and stray
    stdout) lines, bounded and aged out, secrets masked."""
    base = await agent_logs(agent_id, fabric, principal, limit)
    buffer = fabric.processes.lifecycle.logs.get(agent_id)
    return {**base, "items": buffer.tail(limit, process) if buffer else []}


@router.get("/{agent_id}/runs", summary="Session history: every process run of the agent (all replicas)")
async def runs(
    agent_id: str,
    fabric: FabricDep,
    principal: AgentReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    await _agent(fabric, principal, agent_id)
    await fabric.processes.lifecycle.history.flush()  # runs that ended here a moment ago are in
    return {"agent_id": agent_id, "items": await fabric.processes.lifecycle.runs.history(agent_id, limit)}


@router.get("/{agent_id}/kubernetes", summary="Deployment and NetworkPolicy of the agent at isolation 'container'")
async def kubernetes(
    agent_id: str,
    fabric: FabricDep,
    principal: AgentReader,
    image: Annotated[str, Query(min_length=1, max_length=512, description="The agent's container image.")],
    namespace: Annotated[str, Query(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] = "agents",
) -> dict[str, Any]:
    """For Kubernetes operators: the fabric does not apply them (see README "Process agents")."""
    record = await _agent(fabric, principal, agent_id)
    if record.runtime != "process" or record.package_path is None:
        raise InvalidRequest(f"agent {agent_id!r} has no package to run", code="not_a_process_agent")
    agent = await fabric.processes.directory.build(record)
    return {"agent_id": agent_id, "items": agent_manifests(agent, image=image, namespace=namespace)}


async def _health(fabric: FabricDep, agent_id: str) -> dict[str, Any] | None:
    return await fabric.processes.lifecycle.get_health(agent_id)

"""The process runtime as one fabric holds it: isolation, lifecycle, the registry lookup and the
`process` driver, opened in the fabric's lifespan (reached as `fabric.processes`).

Its agents stop gracefully after the consumer has stopped (closing runs in reverse), within the
fabric's shutdown grace: SIGTERM of the fabric drains its agents the same way a stop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.agents import cgroups
from agent_fabric.agents.egress_gate import EgressGate
from agent_fabric.agents.isolation import IsolationManager
from agent_fabric.agents.lifecycle import LifecycleManager
from agent_fabric.agents.nats_credentials import NatsCredentials
from agent_fabric.agents.pool import AgentPool
from agent_fabric.agents.process_alerts import AgentAlerts
from agent_fabric.agents.process_beats import ProcessBeats
from agent_fabric.agents.process_directory import RegistryDirectory
from agent_fabric.agents.process_metrics import ProcessAgentCollector
from agent_fabric.agents.services import AgentServices
from agent_fabric.audit.writer import AuditWriter
from agent_fabric.drivers.factory import Drivers, build_process_driver
from agent_fabric.errors import NotFound
from agent_fabric.periodic import Periodic
from agent_fabric.security.internal_seal import internal_seal_for
from agent_fabric.security.sealing import sealer_for
from agent_fabric.settings import Settings
from agent_fabric.storage.agent_run_store import AgentRunStore
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.tenants import TenantRegistry

log = logging.getLogger(__name__)


@dataclass
class ProcessRuntime:
    lifecycle: LifecycleManager
    isolation: IsolationManager
    directory: RegistryDirectory
    beats: ProcessBeats

    async def start_agent(self, agent_id: str, *, restart: bool = False) -> AgentPool:
        """Start (or restart) the agent's processes here; NotFound if it is not a runnable process agent."""
        self.directory.forget(agent_id)
        agent = await self.directory.process_agent(agent_id)
        if agent is None:
            raise NotFound(f"no registered process agent {agent_id!r}", code="agent_not_found")
        if restart:
            await self.lifecycle.terminate(agent_id, graceful=True, drain_timeout=agent.runtime.drain_timeout)
        return await self.lifecycle.ensure_running(agent, restart=True)

    async def stop_agent(self, agent_id: str, *, drain_timeout: float | None = None) -> None:
        pool = self.lifecycle.pools.get(agent_id)
        drain = drain_timeout
        if drain is None:
            drain = pool.agent.runtime.drain_timeout if pool is not None else 0.0
        await self.lifecycle.terminate(agent_id, graceful=True, drain_timeout=drain)
        await self.directory.set_status(agent_id, "stopped", "stopped by request")

    async def apply(self, agent_id: str, action: str) -> None:
        """A start/stop/restart another replica was asked for: follow it here."""
        if action == "stop":
            await self.lifecycle.terminate(agent_id)
        elif action in ("start", "restart") and (agent_id in self.lifecycle.pools or action == "start"):
            await self.start_agent(agent_id, restart=action == "restart")


async def usable_bwrap() -> str | None:
    """bubblewrap's path if it can make a network namespace here (an unprivileged container without
    user namespaces cannot: then egress is not enforced, and health says so, rather than every agent
    failing to start)."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        probe = await asyncio.create_subprocess_exec(
            path,
            "--unshare-net",
            "--dev-bind",
            "/",
            "/",
            "--",
            "true",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(10):
            _, err = await probe.communicate()
    except (OSError, TimeoutError) as exc:
        log.warning("bubblewrap unusable: egress of process agents is not enforced", extra={"error": str(exc)})
        return None
    if probe.returncode != 0:
        log.warning(
            "bubblewrap cannot make a network namespace here: egress of process agents is not enforced",
            extra={"error": err.decode(errors="replace")[:300]},
        )
        return None
    return path


async def open_process_runtime(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    engine: AsyncEngine,
    nc: NatsClient,
    js: JetStreamContext,
    agents: AgentServices,
    policies: PolicyEngine,
    audit: AuditWriter,
    tenants: TenantRegistry,
    drivers: Drivers,
    owner: str,
    metrics: FabricMetrics,
) -> ProcessRuntime:
    cfg = settings.process
    manager = cgroups.detect()
    root = Path(cfg.work_dir) if cfg.work_dir else settings.state_dir / "agent-work"
    gate = EgressGate(policies, audit, tenants)
    # With the LLM gateway on, sandboxed agents get a relay to this fabric's HTTP port (its /v1).
    bound = settings.http_host if settings.http_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    gateway = (bound, settings.http_port) if settings.llm.upstreams else None
    isolation = IsolationManager(root.resolve(), manager, gate, await usable_bwrap(), gateway)
    log.info("process agents isolation", extra={"enforcement": isolation.enforcement})
    credentials = NatsCredentials(engine, agents.nats_users, sealer_for(settings))
    directory = RegistryDirectory(agents.registry, agents.configs, cfg, credentials)
    lifecycle = LifecycleManager(
        isolation,
        AgentRunStore(engine, owner),
        AgentAlerts(js, audit, tenants, owner),
        nc,
        owner,
        status_hook=directory.set_status,
        seal=internal_seal_for(settings),
        log_lines=cfg.log_lines,
        log_retention=cfg.log_retention_seconds,
    )
    beats = ProcessBeats(lifecycle, owner)
    runtime = ProcessRuntime(lifecycle, isolation, directory, beats)
    metrics.registry.register(ProcessAgentCollector(lifecycle, isolation))
    await lifecycle.start(control=runtime.apply)
    prune = Periodic("agent-runs-retention", 3600.0, lambda: lifecycle.runs.prune(cfg.runs_retention_days))
    prune.start()
    stack.push_async_callback(prune.stop)
    recording = beats.periodic()
    recording.start()
    stack.push_async_callback(recording.stop)
    stack.push_async_callback(lifecycle.shutdown, settings.shutdown_grace_seconds)
    drivers.add(build_process_driver(lifecycle, directory, policies, model_gateway=bool(settings.llm.upstreams)))
    return runtime

"""The fleet manager (seed 000 req. 1.1): registered instances, POD fleets and their health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.agent_zero import registry
from agent_fabric.agent_zero.fleet import Fleet
from agent_fabric.agent_zero.fleet_agents import FleetAgents
from agent_fabric.agent_zero.fleet_routing import FleetRouter
from agent_fabric.agent_zero.fleet_rows import AgentRecord
from agent_fabric.agent_zero.fleet_status import describe
from agent_fabric.agent_zero.pod_health import PodHealth
from agent_fabric.agent_zero.registry import InstanceRegistry
from agent_fabric.inbound.control import ControlChannel
from agent_fabric.security.outbound_urls import OutboundGuard
from agent_fabric.security.sealing import Sealer
from agent_fabric.settings import AgentZeroSettings
from agent_fabric.tenants import TenantRegistry


@dataclass
class FleetManager:
    cfg: AgentZeroSettings
    fleet: Fleet
    instances: InstanceRegistry
    agents: FleetAgents
    health: PodHealth
    router: FleetRouter  # which agent's chat an agent-zero task runs in

    async def views(self, records: list[AgentRecord]) -> list[dict[str, Any]]:
        """The agents as the API shows them, each one's status read from Agent Zero now."""
        return await describe(self.fleet, records, self.cfg, self.agents.mark_lost)


async def open_fleet_manager(
    cfg: AgentZeroSettings,
    engine: AsyncEngine,
    fleet: Fleet,
    tenants: TenantRegistry,
    control: ControlChannel,
    sealer: Sealer,
    guard: OutboundGuard,
) -> FleetManager:
    """Load the registered instances into the (started) fleet, then follow agent.control.instances.
    Call before the task consumer starts: a resumed task may live on a registered instance."""
    instances = InstanceRegistry(engine, fleet, control.announce, sealer, guard)
    await instances.reload()
    control.register(registry.TOPIC, instances.reload)
    return FleetManager(
        cfg,
        fleet,
        instances,
        FleetAgents(engine, fleet, cfg, tenants),
        PodHealth(fleet, cfg.health_cache_seconds, cfg.probe_seconds),
        FleetRouter(engine, fleet, cfg),
    )

"""The agents package as one process holds it: registry, discovery (with its periodic rescan) and
configuration, opened in the fabric's lifespan and reached as `fabric.agents`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import __version__
from agent_fabric.agents.config import AgentConfigs, parse_layer
from agent_fabric.agents.discovery import Discovery
from agent_fabric.agents.registry import AgentRegistry, ModeFor
from agent_fabric.errors import ConfigurationError, InvalidDocument
from agent_fabric.periodic import Periodic
from agent_fabric.settings import Settings
from agent_fabric.storage.documents import DocumentStore

log = logging.getLogger(__name__)


@dataclass
class AgentServices:
    registry: AgentRegistry
    discovery: Discovery
    configs: AgentConfigs


async def open_agents(
    stack: contextlib.AsyncExitStack, settings: Settings, engine: AsyncEngine, docs: DocumentStore, mode_for: ModeFor
) -> AgentServices:
    try:
        environment = parse_layer(settings.agents.config, where="AGENT_FABRIC_AGENTS_CONFIG")
    except InvalidDocument as exc:  # refused at start-up, not at the first agent that reads it
        raise ConfigurationError(exc.message) from None
    registry = AgentRegistry(engine, mode_for)
    dirs = settings.agents_dirs
    if not settings.agents.dir:
        dirs[0].mkdir(parents=True, exist_ok=True)  # the embedded default exists from the first start
    discovery = Discovery(registry, dirs, __version__)
    try:
        await discovery.scan()
    except Exception as exc:  # a scan must never keep the fabric from starting; the rescan retries
        log.warning("agent discovery at start-up failed", extra={"error": str(exc)[:300]})
    rescan = Periodic("agent-discovery", settings.agents.rescan_seconds, discovery.scan)
    rescan.start()
    stack.push_async_callback(rescan.stop)
    return AgentServices(registry=registry, discovery=discovery, configs=AgentConfigs(engine, docs, environment))

"""The agents package as one process holds it: registry, discovery (with its periodic rescan),
configuration, discovery tokens, registration and the agents' NATS users, opened in the fabric's
lifespan and reached as `fabric.agents`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import __version__
from agent_fabric.agents.config import AgentConfigs, parse_layer
from agent_fabric.agents.credentials import DiscoveryTokens
from agent_fabric.agents.directory import CONTROL_TOPIC as DIRECTORY_TOPIC
from agent_fabric.agents.directory import AgentDirectory
from agent_fabric.agents.discovery import Discovery
from agent_fabric.agents.nats_users import NatsUsers
from agent_fabric.agents.registration import Registrar
from agent_fabric.agents.registry import AgentRegistry, ModeFor
from agent_fabric.embedded_nats import EmbeddedNats
from agent_fabric.errors import ConfigurationError, InvalidDocument
from agent_fabric.inbound.control import ControlChannel
from agent_fabric.periodic import Periodic
from agent_fabric.security.sealing import Sealer
from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import Settings
from agent_fabric.storage.documents import DocumentStore

log = logging.getLogger(__name__)


@dataclass
class AgentServices:
    registry: AgentRegistry
    discovery: Discovery
    configs: AgentConfigs
    tokens: DiscoveryTokens
    registrar: Registrar
    nats_users: NatsUsers
    directory: AgentDirectory


@dataclass(frozen=True)
class AgentDeps:
    """What the agents package needs from the rest of the fabric."""

    engine: AsyncEngine
    docs: DocumentStore
    mode_for: ModeFor
    jwt: TokenService
    sealer: Sealer
    embedded_nats: EmbeddedNats | None  # None: an external NATS server
    control: ControlChannel


async def open_agents(stack: contextlib.AsyncExitStack, settings: Settings, deps: AgentDeps) -> AgentServices:
    try:
        environment = parse_layer(settings.agents.config, where="AGENT_FABRIC_AGENTS_CONFIG")
    except InvalidDocument as exc:  # refused at start-up, not at the first agent that reads it
        raise ConfigurationError(exc.message) from None
    registry = AgentRegistry(deps.engine, deps.mode_for)
    directory = AgentDirectory(deps.engine)
    await directory.reload()
    deps.control.register(DIRECTORY_TOPIC, directory.reload)
    configs = AgentConfigs(deps.engine, deps.docs, environment)
    nats_users = NatsUsers(deps.embedded_nats, registry, configs, deps.sealer)
    await nats_users.sync()  # agents registered before this start can connect again
    tokens = DiscoveryTokens(deps.engine, settings.agents.token_ttl_seconds)
    registrar = Registrar(
        deps.engine,
        registry,
        tokens,
        deps.jwt,
        deps.sealer,
        nats_users,
        deps.mode_for,
        settings.jwt.access_ttl_seconds,
        settings.process,
    )
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
    return AgentServices(registry, discovery, configs, tokens, registrar, nats_users, directory)

"""The configured Agent Zero instances, their health, and which one a new task goes to.

Instances come in two sets, LIVE and SANDBOX (seed 000 req. 7): a tenant in SANDBOX mode is routed
only to the sandbox set (AGENT_FABRIC_AGENT_ZERO_SANDBOX_URL; when that is empty, the LIVE set
serves both). Instances registered through the API (agent_zero/registry.py) join and leave at run
time (`add`, `remove`) and may belong to one tenant (POD): that tenant's work goes to its own
instances of the set when it has any, else to the shared ones.

Health comes from `/api/health` every `health_interval_seconds` (version included) and from the
calls themselves: an instance that cannot be reached is marked `error` at once and gets no new
work until a health check succeeds again. New work goes to the least-loaded healthy instance;
each instance runs at most `max_in_flight` tasks (Agent Zero serves 10 requests at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from agent_fabric.agent_zero.a2a_client import AgentZeroA2AClient
from agent_fabric.agent_zero.client import AgentZeroClient, AgentZeroError, CallObserver
from agent_fabric.agent_zero.mcp_client import AgentZeroMcpClient
from agent_fabric.periodic import Periodic
from agent_fabric.security.outbound_urls import OutboundGuard
from agent_fabric.settings import AgentZeroSettings, Mode

LIVE_SET: Mode = "LIVE"
SANDBOX_SET: Mode = "SANDBOX"

log = logging.getLogger(__name__)


@dataclass
class Instance:
    url: str
    client: AgentZeroClient
    mcp: AgentZeroMcpClient
    a2a: AgentZeroA2AClient
    slots: asyncio.Semaphore
    mode_set: Mode = LIVE_SET
    tenant_id: str | None = None  # None: shared by every tenant
    instance_id: str | None = None  # set for instances registered through the API
    in_flight: int = 0
    healthy: bool = True
    version: str | None = None
    last_error: str | None = None
    checked_at: datetime | None = field(default=None)

    @contextlib.asynccontextmanager
    async def slot(self, wait: float | None = None) -> AsyncIterator[None]:
        """One of the instance's request slots (max_in_flight), counted in in_flight while held;
        with `wait`, AgentZeroError(agent_busy) if none frees up in time."""
        try:
            async with asyncio.timeout(wait):
                await self.slots.acquire()
        except TimeoutError:
            raise AgentZeroError(
                "agent_busy", f"Agent Zero at {self.url} had no free request slot for {wait:g} s"
            ) from None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.slots.release()

    @property
    def status(self) -> str:
        if not self.healthy:
            return "error"
        return "busy" if self.in_flight else "idle"

    def view(self) -> dict[str, Any]:
        return {
            "id": self.instance_id,
            "url": self.url,
            "mode_set": self.mode_set,
            "tenant_id": self.tenant_id,
            "source": "api" if self.instance_id else "environment",
            "status": self.status,
            "in_flight": self.in_flight,
            "version": self.version,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }


class Fleet:
    def __init__(
        self,
        cfg: AgentZeroSettings,
        mode_for: Callable[[str | None], Mode] = lambda _: LIVE_SET,
        *,
        observe: CallObserver | None = None,
    ) -> None:
        self._cfg = cfg
        self._observe = observe  # every instance's HTTP calls (metrics)
        self._interval = cfg.health_interval_seconds
        self._mode_for = mode_for
        self._separate_sandbox = bool(cfg.sandbox_instances())
        self.instances = [self.make_instance(url, key, LIVE_SET) for url, key in cfg.instances()]
        self.instances += [self.make_instance(url, key, SANDBOX_SET) for url, key in cfg.sandbox_instances()]
        self._checker = Periodic("agent-zero-health", self._interval, self.check_all)
        self._retired: list[Instance] = []  # removed, closed once their last call has returned

    def make_instance(
        self,
        url: str,
        key: str,
        mode_set: Mode,
        *,
        tenant_id: str | None = None,
        instance_id: str | None = None,
        guard: OutboundGuard | None = None,
    ) -> Instance:
        """`guard`: a tenant-registered URL's outbound rules, applied to every connection its
        clients open (URLs from the operator's environment have none)."""
        cfg = self._cfg

        def transport() -> httpx.AsyncBaseTransport | None:
            return guard.transport() if guard is not None else None

        return Instance(
            url,
            AgentZeroClient(
                url,
                key,
                timeout=cfg.timeout_seconds,
                retries=cfg.retries,
                transport=transport(),
                observe=self._observe,
            ),
            AgentZeroMcpClient(url, key, timeout=cfg.timeout_seconds, transport=transport()),
            AgentZeroA2AClient(
                url, key, timeout=cfg.timeout_seconds, poll_seconds=cfg.poll_seconds, transport=transport()
            ),
            asyncio.Semaphore(cfg.max_in_flight),
            mode_set=mode_set,
            tenant_id=tenant_id,
            instance_id=instance_id,
        )

    def set_for(self, tenant_id: str | None) -> Mode:
        """Which instance set serves the tenant now (its mode, unless it has no sandbox instance to use)."""
        if self._mode_for(tenant_id) == SANDBOX_SET and (
            self._separate_sandbox
            # Another POD's own sandbox instance must not pull this POD off the shared LIVE set.
            or any(i.mode_set == SANDBOX_SET and i.tenant_id in (None, tenant_id) for i in self.instances)
        ):
            return SANDBOX_SET
        return LIVE_SET

    def candidates(self, tenant_id: str | None) -> list[Instance]:
        """The instances that may serve the tenant: its own in its set if it has any, else the shared ones."""
        mode_set = self.set_for(tenant_id)
        in_set = [i for i in self.instances if i.mode_set == mode_set]
        own = [i for i in in_set if tenant_id is not None and i.tenant_id == tenant_id]
        return own or [i for i in in_set if i.tenant_id is None]

    def serves(self, tenant_id: str | None) -> bool:
        return bool(self.candidates(tenant_id))

    async def start(self) -> None:
        await self.check_all()
        self._checker.start()

    async def aclose(self) -> None:
        await self._checker.stop()
        for instance in self.instances + self._retired:
            await _close(instance)
        self._retired = []

    def registered(self) -> dict[str, Instance]:
        """The instances registered through the API, by id."""
        return {i.instance_id: i for i in self.instances if i.instance_id is not None}

    async def add(self, instance: Instance) -> Instance:
        """Route to a registered instance, after a first health check (a down one joins as `error`).
        Adding an id the fleet already has returns the instance it has."""
        await self.check(instance, within=self._cfg.probe_seconds)  # the health loop keeps asking
        present = self.registered().get(instance.instance_id or "")
        if present is not None:  # a reload and the registering request raced; keep one
            await _close(instance)
            return present
        self.instances.append(instance)
        log.info("Agent Zero instance added", extra={"url": instance.url, "status": instance.status})
        return instance

    async def remove(self, instance_id: str) -> Instance | None:
        """Stop routing to a registered instance; its clients close once its running calls return."""
        instance = self.registered().get(instance_id)
        if instance is None:
            return None
        self.instances.remove(instance)
        self._retired.append(instance)
        await self._close_retired()
        log.info("Agent Zero instance removed", extra={"url": instance.url})
        return instance

    async def _close_retired(self) -> None:
        idle = [i for i in self._retired if i.in_flight == 0]
        self._retired = [i for i in self._retired if i.in_flight]
        for instance in idle:
            await _close(instance)

    def by_url(self, url: str) -> Instance | None:
        return next((i for i in self.instances if i.url == url), None)

    def home_of(self, url: str) -> Instance:
        """The instance a chat lives on: its work goes back there, healthy or not yet."""
        instance = self.by_url(url)
        if instance is None:
            raise AgentZeroError("agent_context_lost", f"the chat lives on {url}, which is no longer configured")
        return instance

    def pick(self, tenant_id: str | None = None, *, also: Mapping[str, int] | None = None) -> Instance:
        """The least-loaded healthy instance of the tenant's set. `also` adds load the fleet cannot
        see by instance URL (a POD's fleet agents, say), counted after the calls in flight."""
        candidates = self.candidates(tenant_id)
        if not candidates:
            raise AgentZeroError(
                # Not an outage but a configuration: nothing to retry until an instance is added.
                "runtime_unavailable",
                f"no Agent Zero instance serves the {self.set_for(tenant_id)} set of this tenant (set "
                "AGENT_FABRIC_AGENT_ZERO_URL or register one with POST /api/v2/agent/instances)",
            )
        healthy = [i for i in candidates if i.healthy]
        if not healthy:
            raise AgentZeroError(
                "agent_unreachable",
                "no healthy Agent Zero instance: " + "; ".join(f"{i.url}: {i.last_error}" for i in candidates),
            )
        extra = also or {}
        return min(healthy, key=lambda i: (i.in_flight, extra.get(i.url, 0)))

    def mark_failed(self, instance: Instance, error: AgentZeroError) -> None:
        """Passive health: a call that could not reach the instance takes it out of routing."""
        if error.code == "agent_unreachable" and instance.healthy:
            instance.healthy, instance.last_error = False, error.message
            log.warning("Agent Zero instance down", extra={"url": instance.url, "error": error.message})

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(i) for i in self.instances))
        await self._close_retired()

    async def check(self, instance: Instance, *, within: float | None = None) -> None:
        """Ask the instance's /api/health now and record the answer (no answer `within` s: down)."""
        was = instance.healthy
        try:
            async with asyncio.timeout(within):
                health = await instance.client.health()
        except TimeoutError:
            instance.healthy, instance.last_error = False, f"no answer to /api/health within {within:g} s"
        except AgentZeroError as exc:
            instance.healthy, instance.last_error = False, exc.message
        else:
            instance.healthy, instance.last_error, instance.version = True, None, health.get("version")
        instance.checked_at = datetime.now(UTC)
        if was != instance.healthy:
            log.info("Agent Zero instance health changed", extra={"url": instance.url, "status": instance.status})


async def _close(instance: Instance) -> None:
    await instance.client.aclose()
    await instance.mcp.aclose()
    await instance.a2a.aclose()

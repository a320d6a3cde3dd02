"""The configured Agent Zero instances, their health, and which one a new task goes to.

Health comes from `/api/health` every `health_interval_seconds` (version included) and from the
calls themselves: an instance that cannot be reached is marked `error` at once and gets no new
work until a health check succeeds again. New work goes to the least-loaded healthy instance;
each instance runs at most `max_in_flight` tasks (Agent Zero serves 10 requests at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_fabric.agent_zero.a2a_client import AgentZeroA2AClient
from agent_fabric.agent_zero.client import AgentZeroClient, AgentZeroError
from agent_fabric.agent_zero.mcp_client import AgentZeroMcpClient
from agent_fabric.settings import AgentZeroSettings

log = logging.getLogger(__name__)


@dataclass
class Instance:
    url: str
    client: AgentZeroClient
    mcp: AgentZeroMcpClient
    a2a: AgentZeroA2AClient
    slots: asyncio.Semaphore
    in_flight: int = 0
    healthy: bool = True
    version: str | None = None
    last_error: str | None = None
    checked_at: datetime | None = field(default=None)

    @property
    def status(self) -> str:
        if not self.healthy:
            return "error"
        return "busy" if self.in_flight else "idle"

    def view(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "status": self.status,
            "in_flight": self.in_flight,
            "version": self.version,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }


class Fleet:
    def __init__(self, cfg: AgentZeroSettings) -> None:
        self._interval = cfg.health_interval_seconds
        self.instances = [
            Instance(
                url,
                AgentZeroClient(url, key, timeout=cfg.timeout_seconds, retries=cfg.retries),
                AgentZeroMcpClient(url, key, timeout=cfg.timeout_seconds),
                AgentZeroA2AClient(url, key, timeout=cfg.timeout_seconds, poll_seconds=cfg.poll_seconds),
                asyncio.Semaphore(cfg.max_in_flight),
            )
            for url, key in cfg.instances()
        ]
        self._checker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check_all()
        self._checker = asyncio.create_task(self._check_loop(), name="agent-zero-health")

    async def aclose(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for instance in self.instances:
            await instance.client.aclose()
            await instance.mcp.aclose()
            await instance.a2a.aclose()

    def by_url(self, url: str) -> Instance | None:
        return next((i for i in self.instances if i.url == url), None)

    def pick(self) -> Instance:
        healthy = [i for i in self.instances if i.healthy]
        if not healthy:
            raise AgentZeroError(
                "agent_unreachable",
                "no healthy Agent Zero instance: " + "; ".join(f"{i.url}: {i.last_error}" for i in self.instances),
            )
        return min(healthy, key=lambda i: i.in_flight)

    def mark_failed(self, instance: Instance, error: AgentZeroError) -> None:
        """Passive health: a call that could not reach the instance takes it out of routing."""
        if error.code == "agent_unreachable" and instance.healthy:
            instance.healthy, instance.last_error = False, error.message
            log.warning("Agent Zero instance down", extra={"url": instance.url, "error": error.message})

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(i) for i in self.instances))

    async def _check(self, instance: Instance) -> None:
        was = instance.healthy
        try:
            health = await instance.client.health()
        except AgentZeroError as exc:
            instance.healthy, instance.last_error = False, exc.message
        else:
            instance.healthy, instance.last_error, instance.version = True, None, health.get("version")
        instance.checked_at = datetime.now(UTC)
        if was != instance.healthy:
            log.info("Agent Zero instance health changed", extra={"url": instance.url, "status": instance.status})

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_all()

"""The control plane: "policies / budgets / config changed" on agent.control.<topic>, to every replica.

A replica that stores a change reloads it at once, then announces it; every other replica hears
the announcement (NATS core, milliseconds) and reloads from the database, so a change applies
everywhere within a second without a restart. Reloads of one topic never overlap: a burst of
announcements becomes one reload plus one more at most. A periodic reload of every topic covers
an announcement missed during a NATS reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient

from agent_fabric import names
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel

log = logging.getLogger(__name__)

Reload = Callable[[], Awaitable[None]]


class ControlChannel:
    def __init__(self, nc: NatsClient, interval: float, seal: InternalSeal) -> None:
        # Only a replica's announcement counts (a forged one would force reloads).
        self._channel = ReplicaChannel(nc, seal)
        self._interval = interval
        self._reloaders: dict[str, Reload] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None

    def register(self, topic: str, reload: Reload) -> None:
        """Follow `topic`. Registered after start(), the topic is not loaded here: load it first."""
        if topic not in names.CONTROL_TOPICS:
            raise ValueError(f"unknown control topic {topic!r}")
        self._reloaders[topic] = reload
        self._dirty[topic] = asyncio.Event()
        if self._sub is not None:
            self._tasks.append(asyncio.create_task(self._reload_loop(topic), name=f"control-{topic}"))

    async def start(self) -> None:
        """Load every topic once, then follow announcements."""
        for reload in self._reloaders.values():
            await reload()
        self._sub = await self._channel.subscribe(names.CONTROL_SUBJECTS, self._on_message, what="control")
        self._tasks = [
            asyncio.create_task(self._reload_loop(topic), name=f"control-{topic}") for topic in self._reloaders
        ]
        self._tasks.append(asyncio.create_task(self._periodic(), name="control-periodic"))

    async def announce(self, topic: str) -> None:
        """Tell every replica to reload `topic` (this one included; the reload is idempotent)."""
        try:
            subject = names.control_subject(topic)
            await self._channel.publish(subject, b"{}", flush=True)
        except Exception as exc:  # the periodic reload still carries the change
            log.warning("control announcement failed", extra={"topic": topic, "error": str(exc)})

    async def _on_message(self, msg: Any) -> None:
        topic = msg.subject.rsplit(".", 1)[-1]
        event = self._dirty.get(topic)
        if event is not None:
            event.set()

    async def _reload_loop(self, topic: str) -> None:
        dirty = self._dirty[topic]
        reload = self._reloaders[topic]
        while True:
            await dirty.wait()
            dirty.clear()
            try:
                await reload()
            except Exception as exc:
                log.warning("reload failed; retrying", extra={"topic": topic, "error": str(exc)[:300]})
                await asyncio.sleep(1.0)
                dirty.set()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for event in self._dirty.values():
                event.set()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

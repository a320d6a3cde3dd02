"""Live progress fan-out: Redis/Dragonfly pub/sub when configured, NATS core subjects otherwise.

A progress event is a small JSON object:
`{"id": "<attempt>-<n>", "job_id", "tenant_id", "kind": "state"|"progress"|"end", "status", "data", "time"}`.
Live delivery is best effort (pub/sub); the durable copy is the job's event log in the database,
which SSE replays on reconnect. Publishing is pipelined: one round trip carries every event
queued since the last one, so progress costs little at a thousand tasks a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis

from agent_fabric import names

log = logging.getLogger(__name__)


class ProgressBus(Protocol):
    async def publish(self, event: dict[str, Any]) -> None: ...

    def subscribe(
        self, tenant_id: str, job_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


# Live progress is best effort: if Redis stalls, the oldest unsent events are dropped (the
# database event log keeps every one) rather than letting the outbox grow without bound.
OUTBOX_LIMIT = 100_000


class RedisProgressBus:
    """Publishes to `langgraph:stream:{job_id}` (the contract's channel)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._outbox: list[tuple[str, bytes]] = []
        self._wakeup = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop(), name="redis-progress-flush")

    async def publish(self, event: dict[str, Any]) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            dropped = len(self._outbox) - OUTBOX_LIMIT + 1
            del self._outbox[:dropped]
            log.warning("redis progress outbox full; dropped oldest live events", extra={"dropped": dropped})
        self._outbox.append((names.redis_progress_channel(event["job_id"]), orjson.dumps(event)))
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                for channel, payload in batch:
                    pipe.publish(channel, payload)
                await pipe.execute()
            except Exception as exc:  # live progress is best effort; the event log keeps the copy
                log.warning("redis progress publish failed", extra={"error": str(exc), "events": len(batch)})

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant_id: str, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(names.redis_progress_channel(job_id))

        async def pump() -> None:
            async for message in pubsub.listen():
                event = orjson.loads(message["data"])
                if event.get("tenant_id") == tenant_id:  # job ids repeat across tenants
                    queue.put_nowait(event)

        pump_task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump_task
            await pubsub.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        self._wakeup.set()
        await asyncio.sleep(0)
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        await self._redis.aclose()


class NatsProgressBus:
    """Without Redis: core NATS subjects `agent.progress.<tenant>.<job>` (nats-py batches writes)."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc

    async def publish(self, event: dict[str, Any]) -> None:
        await self._nc.publish(names.nats_progress_subject(event["tenant_id"], event["job_id"]), orjson.dumps(event))

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant_id: str, job_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            queue.put_nowait(orjson.loads(msg.data))

        sub = await self._nc.subscribe(names.nats_progress_subject(tenant_id, job_id), cb=on_message)
        # The subscription must reach the server before the caller reads history or publishes work.
        await self._nc.flush()
        try:
            yield queue
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def ping(self) -> None:
        await self._nc.flush(timeout=2)

    async def aclose(self) -> None:
        """The NATS connection belongs to the app and is closed there."""


async def open_progress_bus(redis_url: str | None, nc: NatsClient) -> ProgressBus:
    if redis_url is None:
        return NatsProgressBus(nc)
    redis = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5, health_check_interval=30)
    await redis.ping()
    return RedisProgressBus(redis)

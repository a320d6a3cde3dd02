"""Live progress fan-out: Redis/Dragonfly pub/sub when configured, NATS core subjects otherwise.

A progress event is a small JSON object:
`{"id": "<attempt>-<n>", "job_id", "tenant_id", "kind": "state"|"progress"|"end", "status", "data", "time"}`.
Live delivery is best effort (pub/sub); the durable copy is the job's event log in the database,
which SSE replays on reconnect. Publishing is batched: one round trip carries every event
queued since the last one, as one EVAL that PUBLISHes each (see RedisProgressBus), so progress
costs little at a thousand tasks a second.
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
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

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

# Every queued event goes out in one command that PUBLISHes each on the server: redis-py's
# pipeline built a command object and parsed a reply per PUBLISH (about 10 us of this process's
# CPU per event, three events per short task); one EVAL packed here costs about 1.5 us per event.
# Channels and payloads alternate in ARGV (no KEYS: the script touches no key).
_PUBLISH_ALL = b"local n = 0 for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) n = n + 1 end return n"
# Events per EVAL: a script blocks the Redis server while it runs, so a backlog goes in slices.
EVAL_SLICE = 1000


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_publish_all(batch: list[tuple[bytes, bytes]]) -> bytes:
    """The RESP bytes of one EVAL publishing each (channel, payload) of `batch`."""
    parts = [b"*%d\r\n$4\r\nEVAL\r\n" % (3 + 2 * len(batch)), _bulk(_PUBLISH_ALL), b"$1\r\n0\r\n"]
    for channel, payload in batch:
        parts.append(_bulk(channel))
        parts.append(_bulk(payload))
    return b"".join(parts)


class RedisProgressBus:
    """Publishes to `langgraph:stream:{job_id}` (the contract's channel)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._outbox: list[tuple[bytes, bytes]] = []
        self._wakeup = asyncio.Event()
        # The flusher's own connection, held from the pool (one flusher: never shared).
        self._conn: AbstractConnection | None = None
        # A server that refuses scripts (ACL, a Redis-compatible store without Lua) gets pipelines.
        self._scripts = True
        self._flusher = asyncio.create_task(self._flush_loop(), name="redis-progress-flush")

    async def publish(self, event: dict[str, Any]) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            dropped = len(self._outbox) - OUTBOX_LIMIT + 1
            del self._outbox[:dropped]
            log.warning("redis progress outbox full; dropped oldest live events", extra={"dropped": dropped})
        self._outbox.append((names.redis_progress_channel(event["job_id"]).encode(), orjson.dumps(event)))
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                if self._scripts:
                    await self._publish_scripted(batch)
                else:
                    await self._publish_pipelined(batch)
            except Exception as exc:  # live progress is best effort; the event log keeps the copy
                log.warning("redis progress publish failed", extra={"error": str(exc), "events": len(batch)})

    async def _publish_scripted(self, batch: list[tuple[bytes, bytes]]) -> None:
        if self._conn is None:
            # (redis-py leaves get_connection unannotated: it takes deprecated arguments)
            self._conn = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        slices = [batch[i : i + EVAL_SLICE] for i in range(0, len(batch), EVAL_SLICE)]
        try:
            await conn.send_packed_command(b"".join(pack_publish_all(s) for s in slices))
            refused: list[list[tuple[bytes, bytes]]] = []
            error = ""
            for piece in slices:  # read every reply, so none is left on the connection
                try:
                    await conn.read_response()
                except ResponseError as exc:
                    refused.append(piece)
                    error = str(exc)
        except Exception:
            await conn.disconnect()  # a reply may be left unread: start afresh next time
            raise
        if refused:
            log.warning("redis refused the progress script; publishing by pipeline from now on", extra={"error": error})
            self._scripts = False
            await self._publish_pipelined([event for piece in refused for event in piece])

    async def _publish_pipelined(self, batch: list[tuple[bytes, bytes]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for channel, payload in batch:
            pipe.publish(channel, payload)
        await pipe.execute()

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
        if self._conn is not None:
            await self._redis.connection_pool.release(self._conn)
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

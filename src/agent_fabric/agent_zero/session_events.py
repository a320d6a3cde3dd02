"""A session's events: written to its log in the database first, then published live on NATS.

That order is what lets a WebSocket miss nothing: it subscribes, then replays the log, then relays
live events it has not replayed (deduplicated by `seq`). An event published before the
subscription is already in the log; one written after the replay read arrives live.

While a message runs, the replica holding the session's `busy` flag is the only writer of its
events, so it numbers them from the session's `last_seq` without asking the database. Progress is
written in the background, one transaction per burst of log items; the final event waits for
those writes and goes in one transaction with the session's new totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric import names
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel
from agent_fabric.storage import session_store as store
from agent_fabric.storage.task_store import utcnow

log = logging.getLogger(__name__)


class SessionEvents:
    """Publishing and subscribing to session events (core NATS; every replica shares the subjects)."""

    def __init__(self, engine: AsyncEngine, nc: NatsClient, seal: InternalSeal) -> None:
        self.engine = engine
        self._channel = ReplicaChannel(nc, seal)  # what reaches a POD administrator's WebSocket comes from a replica

    async def publish(self, session_id: str, events: list[store.Event]) -> None:
        subject = names.agent_session_subject(session_id)
        for event in events:
            body = orjson.dumps(event.wire(session_id))
            await self._channel.publish(subject, body)

    @contextlib.asynccontextmanager
    async def subscribe(self, session_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            queue.put_nowait(orjson.loads(msg.data))

        subject = names.agent_session_subject(session_id)
        sub = await self._channel.subscribe(subject, on_message, what="session event")
        await self._channel.flush()  # the subscription must reach the server before the caller replays the log
        try:
            yield queue
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def run_log(self, session_id: str, last_seq: int) -> RunLog:
        return RunLog(self, session_id, last_seq)


class RunLog:
    """The events of one message, from the first progress item to the response or error."""

    def __init__(self, events: SessionEvents, session_id: str, last_seq: int) -> None:
        self._events = events
        self._session_id = session_id
        self.seq = last_seq
        self._pending: list[store.Event] = []
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()  # the background writer and finish() keep the log in order
        self._writer: asyncio.Task[None] | None = None

    def next_event(self, kind: str, data: Any) -> store.Event:
        self.seq += 1
        return store.Event(self.seq, kind, data, utcnow())

    async def progress(self, data: dict[str, Any]) -> None:
        """A LogFollower's sink: queue the item; the writer stores and publishes the burst."""
        self.add("progress", data)

    def add(self, kind: str, data: Any) -> None:
        """Queue an event: the background writer stores it, then publishes it (off the caller's path)."""
        self._pending.append(self.next_event(kind, data))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name=f"session-events-{self._session_id}")
        self._wake.set()

    async def finish(self, kind: str, data: Any, session_values: dict[str, Any]) -> bool:
        """Store and publish what is queued plus the final event, with the session's new values.
        False when the session was terminated meanwhile (its events are then removed again)."""
        final = self.next_event(kind, data)
        async with self._writing:
            await self._stop_writer()  # it waits for the lock or for work: nothing is half done
            batch, self._pending = [*self._pending, final], []
            values = {**session_values, "last_seq": self.seq, "last_activity_at": final.at}
            open_still = await store.release(self._events.engine, self._session_id, batch, values)
            await self._events.publish(self._session_id, batch)
        if not open_still:
            await store.delete_events(self._events.engine, self._session_id)
        return open_still

    async def abandon(self) -> None:
        """Stop the background writer without a final event (the caller is going away)."""
        async with self._writing:
            await self._stop_writer()

    async def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._writing:
                batch, self._pending = self._pending, []
                if not batch:
                    continue
                try:
                    async with self._events.engine.begin() as conn:
                        await store.insert_events(conn, self._session_id, batch)
                        await store.touch(conn, self._session_id, batch[-1].seq, batch[-1].at)
                except Exception as exc:  # kept for the next burst or the final write, in order
                    self._pending[:0] = batch
                    log.warning(
                        "session progress not stored yet", extra={"session_id": self._session_id, "error": str(exc)}
                    )
                    continue
                await self._events.publish(self._session_id, batch)

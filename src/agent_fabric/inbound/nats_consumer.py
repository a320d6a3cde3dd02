"""The JetStream door: pull task messages, keep them alive, hand them to worker slots.

One durable pull consumer per priority class (`agent-executor-workers-<priority>`). The
process fetches only as much as it has slots for (plus a small prefetch), so the backlog stays
in JetStream, visible to KEDA and to other replicas. Fetched tasks wait in a local queue
ordered by priority. Every held message gets `in_progress` at a third of the ack wait and the
process renews its database leases at the same time, so only a dead process lets them lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agent_fabric import names
from agent_fabric.admission.checks import Actor, Admission
from agent_fabric.admission.policy_model import PolicyDecision
from agent_fabric.errors import FabricError
from agent_fabric.events.envelope import TaskEvent, parse_task_event
from agent_fabric.inbound.rejections import Rejector
from agent_fabric.scheduling.runner import TaskRunner
from agent_fabric.settings import Settings
from agent_fabric.storage.task_store import TaskStore, utcnow
from agent_fabric.tasks import Priority
from agent_fabric.telemetry.metrics import FabricMetrics

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
BUSY_POLL_SECONDS = 0.01
_STOP = 99  # sorts after every priority rank: workers see it once the queue is empty


def nats_actor(event: TaskEvent) -> Actor:
    """Publishers on NATS are services: the task's metadata.user if it names one, else its source."""
    return Actor(event.spec.metadata.get("user") or f"nats:{event.source}"[:128])


class JetStreamDelivery:
    """One held message. Ack, nak and term release its slot."""

    __slots__ = ("_consumer", "_msg", "decision", "event", "num_delivered", "received_at")

    def __init__(self, consumer: TaskConsumer, msg: Any, event: TaskEvent, decision: PolicyDecision | None) -> None:
        self._consumer = consumer
        self._msg = msg
        self.event = event
        self.decision = decision
        self.num_delivered = int(msg.metadata.num_delivered)
        self.received_at = time.perf_counter()

    @property
    def msg(self) -> Any:
        return self._msg

    async def ack(self) -> None:
        self._consumer.release(self)
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        self._consumer.release(self)
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class TaskConsumer:
    def __init__(
        self,
        settings: Settings,
        js: JetStreamContext,
        runner: TaskRunner,
        admission: Admission,
        rejector: Rejector,
        store: TaskStore,
        metrics: FabricMetrics,
    ) -> None:
        self._settings = settings
        self._js = js
        self._runner = runner
        self._admission = admission
        self._rejector = rejector
        self._store = store
        self._metrics = metrics
        self._queue: asyncio.PriorityQueue[tuple[int, int, JetStreamDelivery | None]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._held: set[JetStreamDelivery] = set()
        self._capacity = settings.worker.concurrency + settings.worker.prefetch
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._fetchers: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._intake: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for priority in names.PRIORITIES:
            sub = await self._js.pull_subscribe_bind(names.consumer_name(priority), names.TASK_STREAM)
            self._fetchers.append(asyncio.create_task(self._fetch_loop(priority, sub), name=f"fetch-{priority}"))
        self._workers = [
            asyncio.create_task(self._worker(), name=f"worker-{i}") for i in range(self._settings.worker.concurrency)
        ]
        self._background.append(asyncio.create_task(self._keepalive_loop(), name="keepalive"))

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self, delivery: JetStreamDelivery) -> None:
        self._held.discard(delivery)
        self._metrics.tasks_held.set(len(self._held))
        if len(self._held) < self._capacity:
            self._room.set()

    async def _fetch_loop(self, priority: str, sub: Any) -> None:
        # nats-py's fetch(batch=n) returns at once with what is there, but when nothing is, its
        # lingering pull waits the whole timeout for n messages. So: idle, long-poll for one;
        # busy, ask for up to `room` with a short expiry; a result of none flips back to idle.
        idle = True
        while not self._stopping:
            room = self._capacity - len(self._held)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            batch, timeout = (
                (1, IDLE_POLL_SECONDS) if idle else (min(room, self._settings.worker.fetch_batch), BUSY_POLL_SECONDS)
            )
            try:
                msgs = await sub.fetch(batch=batch, timeout=timeout)
            except (TimeoutError, NatsTimeoutError):
                idle = True
                continue
            except Exception as exc:  # NATS reconnecting: keep trying, the messages wait in the stream
                log.warning("fetch failed", extra={"priority": priority, "error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            idle = False
            for msg in msgs:
                self._take(priority, msg)

    def _take(self, priority: str, msg: Any) -> None:
        event: TaskEvent | None = None
        try:
            event = parse_task_event(msg.headers or {}, msg.data, max_bytes=self._settings.max_event_bytes)
            # For NATS publishers the subject decides the priority (ARCHITECTURE.md).
            subject_priority = Priority(msg.subject.rsplit(".", 1)[-1]) if msg.subject else Priority(priority)
            if event.spec.priority != subject_priority:
                event = replace(event, spec=event.spec.model_copy(update={"priority": subject_priority}))
            decision = self._admission.check(event.spec, nats_actor(event), door="nats")
        except FabricError as exc:
            self._spawn_refusal(msg, exc, event.id if event is not None else None)
            return
        except ValueError as exc:  # a subject outside the four priorities
            self._spawn_refusal(msg, FabricError(str(exc), code="invalid_subject"))
            return
        delivery = JetStreamDelivery(self, msg, event, decision)
        self._held.add(delivery)
        self._metrics.tasks_held.set(len(self._held))
        self._queue.put_nowait((event.spec.priority.rank, next(self._seq), delivery))

    def _spawn_refusal(self, msg: Any, exc: FabricError, event_id: str | None = None) -> None:
        task = asyncio.create_task(self._refuse(msg, exc, event_id))
        self._intake.add(task)
        task.add_done_callback(self._intake.discard)

    async def _refuse(self, msg: Any, exc: FabricError, event_id: str | None = None) -> None:
        """Record and announce the refusal, then terminate the message. `event_id` is the
        CloudEvent's id when it parsed (an approved task comes back under another Nats-Msg-Id)."""
        headers = dict(msg.headers or {})
        try:
            await self._rejector.reject(
                exc,
                raw=msg.data,
                origin="nats",
                subject=msg.subject,
                stream_seq=msg.metadata.sequence.stream,
                headers=headers,
                event_id=event_id or headers.get(names.MSG_ID_HEADER),
            )
        except Exception as record_error:
            log.error(
                "could not record a refused event; it will be redelivered",
                extra={"error": str(record_error), "subject": msg.subject},
            )
            await msg.nak(delay=2.0)
            return
        await msg.term()

    async def _worker(self) -> None:
        while True:
            _, _, delivery = await self._queue.get()
            if delivery is None:
                return
            self._metrics.scheduling_latency.observe(time.perf_counter() - delivery.received_at)
            try:
                if await self._admit(delivery):
                    await self._runner.handle(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task handling failed; handing it back", extra={"job_id": delivery.event.spec.job_id})
                with contextlib.suppress(Exception):
                    await delivery.nak(delay=2.0)

    async def _admit(self, delivery: JetStreamDelivery) -> bool:
        """Approval gate and budget reservation; True to run it now. A parked or already-decided
        task is acked here: its approval (in the database) brings it back."""
        try:
            admitted = await self._admission.admit(delivery.event, delivery.decision, nats_actor(delivery.event))
        except FabricError as exc:
            self.release(delivery)
            await self._refuse(delivery.msg, exc, delivery.event.id)
            return False
        if admitted.verdict == "run":
            return True
        await delivery.ack()
        return False

    async def _keepalive_loop(self) -> None:
        interval = self._settings.nats.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(interval)
            for delivery in list(self._held):
                with contextlib.suppress(Exception):
                    await delivery.in_progress()
            try:
                await self._store.renew_leases(
                    self._runner.owner, utcnow() + timedelta(seconds=self._settings.nats.ack_wait_seconds)
                )
            except Exception as exc:
                log.warning("lease renewal failed", extra={"error": str(exc)})
            await self._observe_lag()

    async def _observe_lag(self) -> None:
        for priority in names.PRIORITIES:
            name = names.consumer_name(priority)
            with contextlib.suppress(NotFoundError, Exception):
                info = await self._js.consumer_info(names.TASK_STREAM, name)
                self._metrics.consumer_pending.labels(name).set(info.num_pending + info.num_ack_pending)

    async def shutdown(self, grace: float) -> None:
        """Stop fetching, hand back what has not started, give running tasks `grace` seconds."""
        if self._stopping:
            return
        self._stopping = True
        self._room.set()
        await asyncio.gather(*self._fetchers, return_exceptions=True)
        if self._intake:
            await asyncio.gather(*self._intake, return_exceptions=True)
        # Not started yet: straight back to JetStream for another replica.
        while not self._queue.empty():
            _, _, delivery = self._queue.get_nowait()
            if delivery is not None:
                with contextlib.suppress(Exception):
                    await delivery.nak(delay=0)
        for _ in self._workers:
            self._queue.put_nowait((_STOP, next(self._seq), None))
        _, late = await asyncio.wait(self._workers, timeout=grace) if self._workers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        log.info("consumer drained", extra={"handed_back_running": len(late)})

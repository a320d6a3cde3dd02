"""The JetStream door: pull task messages, keep them alive, start them in a fair order.

One durable pull consumer per priority class (`agent-executor-workers-<priority>`), each with
its own fetch loop and its own window: a process holds at most `SCHED_WINDOW_PER_PRIORITY`
fetched-but-not-started tasks per class. A class with room keeps a long poll open, so a critical
task published behind 10,000 low ones reaches this process within a round trip, whatever the low
backlog: the low window filling up never blocks the critical fetch. Held tasks wait in the fair
run queue (scheduling/queue.py) that picks the next task for each free worker slot: class with
ageing, then tenant turn, then agent turn, within per-tenant and per-agent running caps.

Held messages stay unacked, so JetStream's pending + ack-pending count (what KEDA reads) is the
whole backlog. Every held message gets `in_progress` at a third of the ack wait and the process
renews its database leases at the same time, so only a dead process lets them lapse.

Every fetched task that has to wait for a slot is recorded as queued (both doors share
storage/queue_store.py): that is where queue-depth limits refuse with `queue_full`, and what status
queries and list_pending read. One that finds a slot on arrival starts at once and its claim writes
its row (see `_take`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from datetime import timedelta
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agent_fabric import names
from agent_fabric.admission.checks import Actor, Admission
from agent_fabric.admission.policy_model import PolicyDecision
from agent_fabric.errors import FabricError, QueueFull
from agent_fabric.events.envelope import TaskEvent, parse_task_event
from agent_fabric.inbound.nats_credentials import NatsCaller, NatsCredentials, Vetted
from agent_fabric.inbound.rejections import Rejector
from agent_fabric.inbound.supervision import SupervisedLoop
from agent_fabric.scheduling.queue import FairQueue, Picked
from agent_fabric.scheduling.runner import TaskRunner
from agent_fabric.settings import Settings
from agent_fabric.storage.outage import is_unreachable
from agent_fabric.storage.queue_store import Enqueued, QueueStore
from agent_fabric.storage.task_store import TaskStore, spec_hash, utcnow
from agent_fabric.tasks import Priority
from agent_fabric.telemetry.log_context import bound, task_fields
from agent_fabric.telemetry.metrics import FabricMetrics

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
RECORDS_IN_FLIGHT = 2  # fetched batches per class being recorded at once
INTAKE_SLICE = 32  # messages parsed and admitted between two event-loop turns (see _take)
BUSY_POLL_SECONDS = 0.01
STOP_SECONDS = 2.0  # how long a cancelled loop may take to end at shutdown
# A running task cancelled at shutdown hands itself back (a release write, then the nak): without
# the nak its message waits out the ack wait before another replica may run it.
HAND_BACK_SECONDS = 3.0  # inside the pod's 5 s margin past the grace (deploy/README.md)
_RANK = {priority: Priority(priority).rank for priority in names.PRIORITIES}


class JetStreamDelivery:
    """One held message. Ack, nak and term release its slot."""

    __slots__ = (
        "_consumer",
        "_msg",
        "actor",
        "decision",
        "dispatched",
        "event",
        "num_delivered",
        "received_at",
        "settled",
    )

    def __init__(
        self, consumer: TaskConsumer, msg: Any, event: TaskEvent, decision: PolicyDecision | None, actor: Actor
    ) -> None:
        self._consumer = consumer
        self._msg = msg
        self.event = event
        self.decision = decision
        self.actor = actor  # from the message's credential (inbound/nats_credentials.py)
        self.num_delivered = int(msg.metadata.num_delivered)
        self.received_at = time.perf_counter()
        self.dispatched = False
        self.settled = False

    @property
    def msg(self) -> Any:
        return self._msg

    async def ack(self) -> None:
        self.settled = True
        self._consumer.release(self)
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        self.settled = True
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
        queue_store: QueueStore,
        metrics: FabricMetrics,
        door: NatsCredentials,
    ) -> None:
        self._settings = settings
        self._door = door
        self._js = js
        self._runner = runner
        self._admission = admission
        self._rejector = rejector
        self._store = store
        self._queue_store = queue_store
        self._metrics = metrics
        # Each task touches these per-class series: looked up once here, not per message.
        self._queue_wait = {p: metrics.queue_wait.labels(p) for p in names.PRIORITIES}
        self._queued_gauge = {p: metrics.tasks_queued.labels(p) for p in names.PRIORITIES}
        self._intake_latency = {p: metrics.intake_latency.labels(p) for p in names.PRIORITIES}
        sched = settings.scheduler
        self.queue: FairQueue[JetStreamDelivery] = FairQueue(
            sched.ageing_seconds,
            tenant_cap=lambda tenant: sched.tenant_caps.get(tenant, sched.tenant_max_running),
            agent_cap=lambda agent: sched.agent_caps.get(agent, sched.agent_max_running),
        )
        self._window = sched.window_per_priority
        self._held: set[JetStreamDelivery] = set()
        # Fetched and being recorded before they may run (tasks with dependencies), per class:
        # counts against the window like queued tasks.
        self._arriving: Counter[str] = Counter()
        self._room = {priority: asyncio.Event() for priority in names.PRIORITIES}
        self._free_slots = settings.worker.concurrency
        self._free_reserved = sched.reserved_critical_slots
        self._slot_freed_at = 0.0
        self._stopping = False
        self._fetchers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._intake: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()
        self._recorders = {priority: asyncio.Semaphore(RECORDS_IN_FLIGHT) for priority in names.PRIORITIES}
        self._loops: list[SupervisedLoop] = []

    async def start(self) -> None:
        for priority in names.PRIORITIES:
            sub = await self._js.pull_subscribe_bind(names.consumer_name(priority), names.TASK_STREAM)
            loop = self._supervised(f"fetch-{priority}", functools.partial(self._fetch_loop, priority, sub))
            self._fetchers.append(loop.start())
        self._background.append(self._supervised("keepalive", self._keepalive_loop).start())

    def _supervised(self, name: str, body: Callable[[], Awaitable[None]]) -> SupervisedLoop:
        restarts = self._metrics.loop_restarts.labels(name)
        loop = SupervisedLoop(name, body, stopping=lambda: self._stopping, on_crash=restarts.inc)
        self._loops.append(loop)
        return loop

    def dead_loops(self) -> list[str]:
        """Names of the consumer's loops that are not running now (crashed, waiting to restart)."""
        return [loop.name for loop in self._loops if not loop.alive]

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self, delivery: JetStreamDelivery) -> None:
        self._held.discard(delivery)
        self._metrics.tasks_held.set(len(self._held))

    def _queued_in(self, priority: str) -> int:
        return self.queue.held_by_rank.get(_RANK[priority], 0) + self._arriving[priority]

    # -- fetching --
    async def _fetch_loop(self, priority: str, sub: Any) -> None:
        # nats-py's fetch(batch=n) returns at once with what is there, but when nothing is, its
        # lingering pull waits the whole timeout for n messages. So: idle, long-poll for one;
        # busy, ask for up to `room` with a short expiry; a result of none flips back to idle.
        idle = True
        room_event = self._room[priority]
        while not self._stopping:
            room = self._window - self._queued_in(priority)
            if room <= 0:
                room_event.clear()
                await room_event.wait()
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
            vetted = await self._door.screen(msgs, self._spawn_refusal)  # the credential, as at the HTTP door
            if not vetted:
                continue
            # Reading may run ahead of recording by a few batches, not more: a flood's records
            # would otherwise crowd the event loop and the database ahead of everything else.
            await self._recorders[priority].acquire()
            try:
                await self._take(priority, vetted)
            except BaseException:
                # _take hands the recorder slot on only as its very last step; failing before that
                # it still holds it. (The loop's supervisor restarts the loop.)
                self._recorders[priority].release()
                self._hand_back_batch([v.msg for v in vetted])
                raise

    async def _take(self, priority: str, msgs: list[Vetted]) -> None:
        """Parse and admit in memory; what finds a free slot starts now. The rest is recorded as
        queued in the background (queue limits), so the next fetch does not wait for the database
        and reading a backlog (and what is behind it) goes at NATS speed.

        A batch is taken INTAKE_SLICE messages at a time, with a loop turn between slices: parsing
        a whole batch of 128 held the event loop for up to 100 ms on a saturated machine, and a
        critical task fetched meanwhile (or the reply to its claim) waited for all of it.

        A task that starts on arrival is never recorded as queued: its claim writes its row, one
        write instead of two, and a critical task reaches its driver without a database round trip
        in between. It was never queued, so the queue limits neither count nor refuse it. A task
        with dependencies is the exception: the gate may park it `waiting`, which the limits count,
        so it is recorded (and checked) before it may be dispatched."""
        fetched = time.perf_counter()
        ready: list[JetStreamDelivery] = []
        gated: list[JetStreamDelivery] = []
        for start in range(0, len(msgs), INTAKE_SLICE):
            if start:
                await asyncio.sleep(0)
            arrived: list[JetStreamDelivery] = []
            for vetted in msgs[start : start + INTAKE_SLICE]:
                delivery = self._parse(priority, vetted.msg, vetted.caller)
                if delivery is None:
                    continue
                self._held.add(delivery)
                (gated if delivery.event.spec.depends_on else arrived).append(delivery)
            self._metrics.tasks_held.set(len(self._held))
            if arrived:
                for delivery in arrived:
                    self._push(delivery)
                self._dispatch()
                ready += arrived
        if ready:
            self._intake_latency[priority].observe(time.perf_counter() - fetched)
        to_record = [d for d in ready if not d.dispatched] + gated
        if not to_record:
            self._recorders[priority].release()
            return
        self._arriving[priority] += len(gated)
        task = asyncio.create_task(self._record(priority, to_record, fetched))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    def _hand_back_batch(self, msgs: list[Any]) -> None:
        """After _take failed half-way: what it held from `msgs` and did not start goes back to
        JetStream now, instead of being kept alive (in_progress) by a loop that no longer owns it."""
        batch = {id(msg) for msg in msgs}
        stranded = [d for d in self._held if id(d.msg) in batch and not d.dispatched]
        gone = {id(d) for d in stranded}
        self.queue.remove(lambda d: id(d) in gone)
        for delivery in stranded:
            task = asyncio.create_task(delivery.nak(delay=1.0))
            self._intake.add(task)
            task.add_done_callback(self._intake.discard)

    def _push(self, delivery: JetStreamDelivery) -> None:
        delivery.received_at = time.perf_counter()
        spec = delivery.event.spec
        self.queue.push(delivery, rank=spec.priority.rank, tenant=spec.tenant_id, agent=spec.agent_definition.label)

    async def _record(self, priority: str, waiting: list[JetStreamDelivery], fetched: float) -> None:
        """Record as queued (queue limits). A task already in the run queue leaves it if refused;
        a gated task (one with dependencies) enters it once recorded."""
        gated = sum(1 for d in waiting if d.event.spec.depends_on)
        try:
            recorded = await asyncio.gather(
                *(self._queue_store.enqueue(d.event.spec, spec_hash(d.event.spec), d.event.id) for d in waiting),
                return_exceptions=True,
            )
        finally:
            self._arriving[priority] -= gated
            self._recorders[priority].release()
        # Decide everything before the first await, so no refused task is dispatched meanwhile.
        redeliver: list[JetStreamDelivery] = []
        refuse: list[tuple[JetStreamDelivery, Enqueued]] = []
        pushed = False
        for delivery, outcome in zip(waiting, recorded, strict=True):
            if delivery.dispatched:
                continue  # it found a slot while being recorded: it runs, it is no longer queued
            if isinstance(outcome, BaseException):
                log.warning("could not record a task as queued; redelivering", extra={"error": str(outcome)})
                redeliver.append(delivery)
            elif outcome.full is not None:
                refuse.append((delivery, outcome))
            elif delivery.event.spec.depends_on:  # gated: its turn in the run queue starts now
                self._push(delivery)
                pushed = True
        gone = {id(d) for d in redeliver} | {id(d) for d, _ in refuse}
        if gone:
            self.queue.remove(lambda d: id(d) in gone)
        for delivery, outcome in refuse:
            self.release(delivery)
            self._spawn_refusal(delivery.msg, _queue_full(delivery, outcome), delivery.event.id)
        if pushed:
            self._intake_latency[priority].observe(time.perf_counter() - fetched)
        self._queued_gauge[priority].set(self._queued_in(priority))
        self._dispatch()
        for delivery in redeliver:
            await delivery.nak(delay=1.0)  # the database is away: the task waits in JetStream

    def _parse(self, priority: str, msg: Any, caller: NatsCaller) -> JetStreamDelivery | None:
        """The message as a delivery to run, or None when it was refused. Whatever goes wrong in
        reading or admitting one message is that message's problem: it is refused (dead letter or
        failure event, with the reason) and terminated, and the fetch loop goes on."""
        event: TaskEvent | None = None
        try:
            event = parse_task_event(
                msg.headers or {},
                msg.data,
                max_bytes=self._settings.max_event_bytes,
                max_depth=self._settings.max_json_depth,
                default_tenant=caller.tenant_id,
                default_user=caller.user,
            )
            caller.check(event.spec)  # tenant and permission from the credential, never the payload
            # For NATS publishers the subject decides the priority (ARCHITECTURE.md).
            subject_priority = Priority(msg.subject.rsplit(".", 1)[-1]) if msg.subject else Priority(priority)
            if event.spec.priority != subject_priority:
                event = replace(event, spec=event.spec.model_copy(update={"priority": subject_priority}))
            actor = caller.actor(event)
            decision = self._admission.check(event.spec, actor, door="nats")
        except FabricError as exc:
            self._spawn_refusal(msg, caller.confine(exc), event.id if event is not None else None)
            return None
        except ValueError as exc:  # a subject outside the four priorities
            self._spawn_refusal(msg, FabricError(str(exc), code="invalid_subject"))
            return None
        except Exception as exc:
            log.exception("could not read or admit an event; refusing it", extra={"subject": msg.subject})
            reason = f"the fabric could not read this event: {type(exc).__name__}: {exc}"[:500]
            refusal = caller.confine(FabricError(reason, code="unreadable_event"))
            self._spawn_refusal(msg, refusal, event.id if event else None)
            return None
        return JetStreamDelivery(self, msg, event, decision, actor)

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

    # -- dispatching --
    def _dispatch(self) -> None:
        """Start what the free slots may take, in the fair queue's order. Called right where a
        task becomes ready or a slot frees, so a start never waits for another loop turn. The
        reserved slots take only tasks of (effective) class critical, so critical work starts
        even when long tasks hold every ordinary slot."""
        while not self._stopping:
            picked, reserved = self._next()
            if picked is None:
                return
            now = time.perf_counter()
            delivery = picked.item
            delivery.dispatched = True
            priority = delivery.event.spec.priority.value
            self._metrics.scheduling_latency.observe(now - max(delivery.received_at, self._slot_freed_at))
            self._queue_wait[priority].observe(now - delivery.received_at)
            self._queued_gauge[priority].set(self._queued_in(priority))
            self._room[priority].set()
            task = asyncio.create_task(self._run(picked, reserved), name=f"task-{delivery.event.spec.job_id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _next(self) -> tuple[Picked[JetStreamDelivery] | None, bool]:
        if self._free_slots > 0:
            picked = self.queue.pop()
            if picked is not None:
                self._free_slots -= 1
            return picked, False
        if self._free_reserved > 0:
            picked = self.queue.pop(max_rank=Priority.CRITICAL.rank)
            if picked is not None:
                self._free_reserved -= 1
            return picked, True
        return None, False

    async def _run(self, picked: Picked[JetStreamDelivery], reserved: bool) -> None:
        delivery = picked.item
        try:
            with bound(**task_fields(delivery.event.spec, delivery.event.trace)):
                log.debug("task dispatched", extra={"delivery": delivery.num_delivered})
                if await self._admit(delivery):
                    await self._runner.handle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task handling failed; handing it back", extra={"job_id": delivery.event.spec.job_id})
            if not delivery.settled:
                with contextlib.suppress(Exception):
                    await delivery.nak(delay=2.0)
        finally:
            self.queue.done(picked.tenant, picked.agent)
            if reserved:
                self._free_reserved += 1
            else:
                self._free_slots += 1
            self._slot_freed_at = time.perf_counter()
            self._dispatch()

    async def _admit(self, delivery: JetStreamDelivery) -> bool:
        """Approval gate and budget reservation; True to run it now. A parked or already-decided
        task is acked here: its approval (in the database) brings it back."""
        try:
            admitted = await self._admission.admit(delivery.event, delivery.decision, delivery.actor)
        except FabricError as exc:
            self.release(delivery)
            await self._refuse(delivery.msg, exc, delivery.event.id)
            return False
        except Exception as exc:
            if is_unreachable(exc):
                raise  # the database is away: the task is handed back and comes again
            # Anything else is about this task (a bug its data tripped): refuse it with the reason
            # instead of handing it back to fail the same way forever.
            log.exception("admission failed; refusing the task", extra={"job_id": delivery.event.spec.job_id})
            self.release(delivery)
            reason = f"the fabric could not admit this task: {type(exc).__name__}: {exc}"[:500]
            await self._refuse(delivery.msg, FabricError(reason, code="admission_failed"), delivery.event.id)
            return False
        if admitted.verdict == "run":
            return True
        await delivery.ack()
        return False

    # -- upkeep --
    async def _keepalive_loop(self) -> None:
        interval = self._settings.nats.ack_wait_seconds / 3
        while not self._stopping:
            await asyncio.sleep(interval)
            for n, delivery in enumerate(list(self._held), 1):
                with contextlib.suppress(Exception):
                    await delivery.in_progress()
                if n % 256 == 0:
                    # A publish into the client's buffer does not suspend: with 20,000 held tasks
                    # this loop would otherwise hold the event loop for a third of a second.
                    await asyncio.sleep(0)
            try:
                # Only the tasks a driver runs here now: one whose message went back (handed back
                # after an error) must let its lease lapse, so its redelivery can take it over.
                driving = self._runner.driving()
                marked = (
                    await self._store.renew_leases(
                        self._runner.owner,
                        utcnow() + timedelta(seconds=self._settings.nats.ack_wait_seconds),
                        jobs=driving,
                    )
                    if driving
                    else []
                )
            except Exception as exc:
                log.warning("lease renewal failed", extra={"error": str(exc)})
                marked = []
            for tenant_id, job_id, message in marked:  # cancelled, and the broadcast missed us
                self._runner.cancel_local(tenant_id, job_id, message)
            await self._observe_lag()

    async def _observe_lag(self) -> None:
        for priority in names.PRIORITIES:
            name = names.consumer_name(priority)
            with contextlib.suppress(NotFoundError, Exception):
                info = await self._js.consumer_info(names.TASK_STREAM, name)
                self._metrics.consumer_pending.labels(name).set(info.num_pending + info.num_ack_pending)

    async def shutdown(self, grace: float) -> None:
        """Stop fetching, hand back what has not started, give running tasks what is left of
        `grace` seconds, then cancel them (they hand themselves back). Every stage shares the one
        deadline, so the whole drain fits the pod's termination grace (deploy/README.md)."""
        if self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + grace

        def left(at_most: float = grace) -> float:
            return max(0.0, min(at_most, deadline - time.monotonic()))

        for event in self._room.values():
            event.set()
        # A fetch loop sees the flag within one poll; then the recording and refusals in flight.
        await _stop(self._fetchers, "fetch loops", wait=left(3 * IDLE_POLL_SECONDS))
        await _stop(self._recording, "queued records", wait=left())
        await _stop(self._intake, "refusals", wait=left())
        # Not started yet: straight back to JetStream for another replica.
        for delivery in self.queue.remove(lambda _: True):
            with contextlib.suppress(Exception):
                await delivery.nak(delay=0)
        late = await _stop(self._running, "running tasks", wait=left(), stuck_after=HAND_BACK_SECONDS)
        await _stop(self._background, "keepalive", wait=0)
        log.info("consumer drained", extra={"handed_back_running": late})


async def _stop(
    tasks: Collection[asyncio.Task[Any]], what: str, *, wait: float, stuck_after: float = STOP_SECONDS
) -> int:
    """Let `tasks` end within `wait` seconds, then cancel them; how many had to be cancelled. One
    that ignores its cancellation for `stuck_after` seconds more is logged and left behind: a stuck loop must
    not hold the process past its grace period (and the orchestrator's kill), and the log says
    which one it was."""
    tasks = list(tasks)  # the live sets shrink as their tasks end
    pending = {t for t in tasks if not t.done()}
    if pending and wait > 0:
        _, pending = await asyncio.wait(pending, timeout=wait)
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=stuck_after)
        if stuck:
            names_ = sorted(t.get_name() for t in stuck)
            log.error("tasks did not stop; leaving them", extra={"what": what, "tasks": names_})
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("task ended with an error", extra={"what": what, "error": str(task.exception())})
    return len(pending)


def _queue_full(delivery: JetStreamDelivery, outcome: Enqueued) -> QueueFull:
    spec = delivery.event.spec
    return QueueFull(outcome.full or "queue full", job_id=spec.job_id, tenant_id=spec.tenant_id)

"""Runs one delivered task to a durable outcome: claim, drive, record, publish, then ack.

The order is the fabric's durability guarantee. The JetStream message is acked only after the
outcome is in the database and the result is in the AGENT_STATUS stream. A crash anywhere
before the ack means redelivery, and the redelivery finds either a running task whose lease
lapsed (resume from the checkpoint) or a finished one (publish if needed, never run again).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from agent_fabric import names
from agent_fabric.drivers.factory import Drivers
from agent_fabric.errors import InvalidTask, TaskFailure
from agent_fabric.events.envelope import TaskEvent
from agent_fabric.llm_gateway.task_access import TaskModelAccess
from agent_fabric.outbound.progress import ProgressBus
from agent_fabric.outbound.results import ResultPublisher
from agent_fabric.settings import Settings
from agent_fabric.storage.outage import write_through_outage
from agent_fabric.storage.task_store import (
    Claim,
    EventRow,
    Outcome,
    SettledRun,
    TaskRecord,
    TaskStore,
    spec_hash,
    utcnow,
)
from agent_fabric.tasks import Priority, TaskSpec, TaskStatus
from agent_fabric.telemetry.metrics import FabricMetrics
from agent_fabric.telemetry.tracing import parent_context, trace_attributes

log = logging.getLogger(__name__)

_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
# How long after a task finished a duplicate waits before it republishes a result that is not
# yet marked published: the publishing replica marks it in the background within milliseconds.
RESULT_MARK_GRACE_SECONDS = 2.0


class Delivery(Protocol):
    """A message held from JetStream (or anything that acks like one)."""

    event: TaskEvent
    num_delivered: int

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...


@dataclass
class _Run:
    """The fabric's side of one attempt (implements drivers.base.RunContext)."""

    spec: TaskSpec
    attempt: int
    checkpoint: Any | None
    step: int
    runner: TaskRunner
    n: int = 0
    usage: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "compute_seconds": 0.0, "cost_usd": 0.0})
    endpoint: dict[str, str] | None = None
    deadline: float = math.inf  # time.monotonic() when the run's timeout ends it
    driving: _Driving | None = None

    def ending(self) -> bool:
        """Cancelled, failed by the fabric, or past its deadline; not a shutdown's hand-back."""
        driving = self.driving
        stopped = driving is not None and (driving.cancelled_by is not None or driving.failed_with is not None)
        return stopped or time.monotonic() >= self.deadline

    def next_n(self) -> int:
        self.n += 1
        return self.n

    async def progress(self, data: dict[str, Any]) -> None:
        await self.runner.emit(self, EventRow(self.attempt, self.next_n(), "progress", None, data))

    async def save_checkpoint(self, state: Any) -> None:
        self.step += 1
        spec, step = self.spec, self.step
        # The database being away is not the agent's failure: wait for it (within the run's deadline).
        await write_through_outage(
            lambda: self.runner.store.save_checkpoint(spec.tenant_id, spec.job_id, step, self.attempt, state),
            what="checkpoint",
            job_id=spec.job_id,
        )

    async def model_endpoint(self) -> dict[str, str]:
        """OPENAI_BASE_URL and OPENAI_API_KEY for this run's agent (one key per attempt)."""
        if self.endpoint is None:
            self.endpoint = await self.runner.model_endpoint(self.spec)
        return dict(self.endpoint)

    def add_usage(
        self, *, tokens: int = 0, compute_seconds: float = 0.0, cost_usd: float = 0.0, model: str | None = None
    ) -> None:
        self.usage["tokens"] += tokens
        self.usage["compute_seconds"] += compute_seconds
        self.usage["cost_usd"] += cost_usd
        if tokens:
            self.runner.metrics.tokens_total.labels(self.spec.agent_definition.label, model or "unknown").inc(tokens)


@dataclass
class _Driving:
    """A task this process holds, from its claim to its outcome: what a cancellation acts on."""

    cancelled_by: str | None = None  # the message it ends with, once someone cancelled it
    driver: asyncio.Task[Any] | None = None
    failed_with: tuple[str, str] | None = None  # (code, message): stopped by the fabric, ends failed

    def fail(self, code: str, message: str) -> None:
        if self.cancelled_by is not None or self.failed_with is not None:
            return
        self.failed_with = (code, message)
        if self.driver is not None:
            self.driver.cancel()

    def cancel(self, message: str) -> None:
        # Once only: a second cancel() would interrupt the driver's own clean-up (a chat reset).
        if self.cancelled_by is not None:
            return
        self.cancelled_by = message
        if self.driver is not None:
            self.driver.cancel()


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        drivers: Drivers,
        results: ResultPublisher,
        bus: ProgressBus,
        metrics: FabricMetrics,
        owner: str,
        tracer: Tracer,
        llm: TaskModelAccess | None = None,
    ) -> None:
        self.tracer = tracer
        self.llm = llm
        self.settings = settings
        self.store = store
        self.drivers = drivers
        self.results = results
        self.bus = bus
        self.metrics = metrics
        self.owner = owner
        self._lease = timedelta(seconds=settings.nats.ack_wait_seconds)
        self._active_agents: Counter[str] = Counter()
        self._running = 0
        # Read when scraped, not set per task (a gauge's set takes a lock: two per task start and end).
        metrics.agents_active.set_function(lambda: len(self._active_agents))
        metrics.tasks_running.set_function(lambda: self._running)
        self._totals: dict[tuple[str, str], Any] = {}  # tasks_total's children by (agent, status)
        self._background: set[asyncio.Task[Any]] = set()
        # Results this process published whose "published" flag is still on its way to the
        # database: a duplicate arriving in that window must not publish them again.
        self._publishing: set[tuple[str, str]] = set()
        self._marks: list[tuple[str, str]] = []  # published, to be noted (see _mark_published_later)
        self._marking: asyncio.Task[None] | None = None
        self._driving: dict[tuple[str, str], _Driving] = {}

    async def handle(self, delivery: Delivery) -> None:
        spec = delivery.event.spec
        # The consumer bound the task's log fields already (its dispatch); inside this span every
        # line carries the span's own ids (telemetry/log_context.py).
        with self.tracer.start_as_current_span(
            f"run {spec.agent_definition.runtime}",
            context=parent_context(delivery.event.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": names.task_subject(spec.priority.value),
                "agent_fabric.job_id": spec.job_id,
                "agent_fabric.tenant_id": spec.tenant_id,
                "agent_fabric.agent": spec.agent_definition.label,
                "agent_fabric.delivery": delivery.num_delivered,
            },
        ):
            await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        spec = delivery.event.spec
        if delivery.num_delivered == 1 and await self._settle_at_once(delivery):
            return
        claim = await self.store.claim(self._claim(delivery))
        if not claim.claimed:
            await self._not_ours(delivery, claim.current)
            return
        key = (spec.tenant_id, spec.job_id)
        # A task taken over from a replica that died may have been cancelled meanwhile.
        self._driving[key] = driving = _Driving(cancelled_by=claim.cancelled_by)
        try:
            await self._run_claimed(delivery, claim.attempts, driving)
        finally:
            self._driving.pop(key, None)

    def _claim(self, delivery: Delivery) -> Claim:
        spec = delivery.event.spec
        now = utcnow()
        return Claim(
            spec=spec,
            spec_hash=spec_hash(spec),
            event_id=delivery.event.id,
            owner=self.owner,
            lease_until=now + self._lease,
            now=now,
        )

    async def _settle_at_once(self, delivery: Delivery) -> bool:
        """A first delivery of a task its driver settles at once (drivers/builtin.py): run it, then
        claim and finish it in one write (storage/task_settle.py). False when that does not apply
        or the task was not free to take (nothing written): the caller takes the ordinary path."""
        spec = delivery.event.spec
        if spec.priority is Priority.CRITICAL:
            # A critical task's `running` waits only for its claim (its own writer, no linger):
            # the one write here carries the outcome and the finish hooks too, which measured
            # 48-57 ms p50 from publish to running behind a backlog against 17-24 ms claiming first.
            return False
        driver = self.drivers.get(spec.agent_definition.runtime)
        at_once = getattr(driver, "settles_at_once", None)
        if driver is None or at_once is None or not at_once(spec):
            return False
        run = _Run(spec, 1, None, 0, self)
        label = spec.agent_definition.label
        self._agent_started(label)
        started = time.monotonic()
        try:
            outcome: tuple[TaskStatus, Any, str | None, str | None] = (
                TaskStatus.COMPLETED,
                await driver.run(run),
                None,
                None,
            )
        except TaskFailure as exc:
            outcome = (TaskStatus.FAILED, None, exc.code, exc.message)
        except InvalidTask as exc:
            outcome = (TaskStatus.REJECTED, None, exc.code, exc.message)
        except Exception:
            return False  # the ordinary path runs it again and records what went wrong
        finally:
            self._agent_finished(label)
        elapsed = time.monotonic() - started
        status, result, code, message = outcome
        if run.usage["compute_seconds"] == 0.0:
            run.usage["compute_seconds"] = round(elapsed, 6)
        claim = self._claim(delivery)
        settled = SettledRun(claim, status, result, code, message, dict(run.usage), final_n=run.next_n())
        try:
            record = await self.store.settle_at_once(settled)
        except Exception as exc:
            # The database may be away: the ordinary path waits for it (and finds this task
            # finished if the write landed after all).
            log.warning("settle at once failed; claiming instead", extra={"error": str(exc)})
            return False
        if record is None:
            return False
        self.metrics.task_duration.observe(elapsed)
        self._task_counted(label, status.value)
        span = trace.get_current_span()
        span.set_attribute("agent_fabric.status", status.value)
        span.set_attribute("agent_fabric.attempt", 1)
        if code is not None:
            span.set_status(StatusCode.ERROR, f"{code}: {message}"[:300])
        if self.settings.publish_transitions:
            await self.results.publish_transition(spec.tenant_id, spec.job_id, TaskStatus.RUNNING, 1)
        for row in settled.events:
            await self._publish_live(run, row)
        await self._publish_and_ack(delivery, record)
        return True

    async def _run_claimed(self, delivery: Delivery, attempts: int, driving: _Driving) -> None:
        spec = delivery.event.spec
        if attempts > 1:
            self.metrics.redeliveries.inc()
        if driving.cancelled_by is not None:
            run = _Run(spec, attempts, None, 0, self)
            await self._conclude(delivery, run, TaskStatus.CANCELLED, None, "cancelled", driving.cancelled_by, 0.0)
            return
        if attempts > self.settings.worker.max_attempts:
            run = _Run(spec, attempts, None, 0, self)
            await self._conclude(
                delivery,
                run,
                TaskStatus.FAILED,
                None,
                "too_many_attempts",
                f"gave up after {attempts - 1} attempts died before finishing",
                0.0,
            )
            return
        saved = await self.store.latest_checkpoint(spec.tenant_id, spec.job_id) if attempts > 1 else None
        run = _Run(spec, attempts, saved[1] if saved else None, saved[0] if saved else 0, self)
        log.debug("task started", extra={"attempt": run.attempt, "runtime": spec.agent_definition.runtime})
        await self._publish_live(
            run, EventRow(run.attempt, 0, "state", TaskStatus.RUNNING.value, {"attempt": run.attempt})
        )
        if self.settings.publish_transitions:
            await self.results.publish_transition(spec.tenant_id, spec.job_id, TaskStatus.RUNNING, run.attempt)
        await self._drive(delivery, run, driving)

    async def _drive(self, delivery: Delivery, run: _Run, driving: _Driving) -> None:
        spec = run.spec
        label = spec.agent_definition.label
        self._agent_started(label)
        started = time.monotonic()
        timeout = spec.timeout_seconds or self.settings.worker.default_timeout_seconds
        run.deadline, run.driving = started + timeout, driving
        outcome: tuple[TaskStatus, Any, str | None, str | None]
        try:
            driver = self.drivers.for_task(spec)
            if driving.cancelled_by is not None:  # cancelled between its claim and now
                raise asyncio.CancelledError
            # Its own asyncio task, so a cancellation stops the driver and not this worker.
            driving.driver = asyncio.create_task(driver.run(run), name=f"drive {spec.job_id}")
            async with asyncio.timeout(timeout):
                result = await driving.driver
        except TimeoutError:
            outcome = (TaskStatus.TIMED_OUT, None, "timeout", f"the run exceeded its {timeout:g} s timeout")
        except TaskFailure as exc:
            outcome = (TaskStatus.FAILED, None, exc.code, exc.message)
        except InvalidTask as exc:
            outcome = (TaskStatus.REJECTED, None, exc.code, exc.message)
        except asyncio.CancelledError:
            if driving.failed_with is not None and not _stopping():
                outcome = (TaskStatus.FAILED, None, *driving.failed_with)
            elif driving.cancelled_by is None or _stopping():
                # Shutdown past the grace period: hand the task back so another replica resumes it
                # from its last checkpoint right away, instead of after the lease lapses (and ends
                # it as cancelled there, if that is what was asked meanwhile).
                await asyncio.shield(self._hand_back(delivery, spec))
                raise
            else:
                outcome = (TaskStatus.CANCELLED, None, "cancelled", driving.cancelled_by)
        except Exception as exc:
            log.exception("driver crashed", extra={"job_id": spec.job_id, "runtime": spec.agent_definition.runtime})
            outcome = (TaskStatus.FAILED, None, "driver_error", f"{type(exc).__name__}: {exc}"[:1000])
        else:
            outcome = (TaskStatus.COMPLETED, result, None, None)
        finally:
            self._agent_finished(label)
        if driving.cancelled_by is not None and outcome[0] != TaskStatus.COMPLETED:
            # A driver that turned the cancellation into a failure of its own still ends cancelled.
            outcome = (TaskStatus.CANCELLED, None, "cancelled", driving.cancelled_by)
        elif driving.failed_with is not None and outcome[0] != TaskStatus.COMPLETED:
            outcome = (TaskStatus.FAILED, None, *driving.failed_with)
        elapsed = time.monotonic() - started
        self.metrics.task_duration.observe(elapsed)
        status, value, code, message = outcome
        await self._conclude(delivery, run, status, value, code, message, elapsed)

    async def _conclude(
        self,
        delivery: Delivery,
        run: _Run,
        status: TaskStatus,
        result: Any,
        code: str | None,
        message: str | None,
        elapsed: float,
    ) -> None:
        spec = run.spec
        if self.llm is not None and run.endpoint is not None:
            try:  # its keys die with it; its calls' spend joins its usage
                await self.llm.conclude(spec, run.usage)
            except Exception as exc:  # keys still expire by themselves; the calls stay in llm_calls
                log.warning("llm gateway accounts not closed", extra={"job_id": spec.job_id, "error": str(exc)})
        if run.usage["compute_seconds"] == 0.0:
            run.usage["compute_seconds"] = round(elapsed, 6)
        final = EventRow(
            run.attempt, run.next_n(), "state", status.value, {"code": code, "message": message} if code else None
        )
        end = EventRow(run.attempt, run.next_n(), "end", status.value, None)
        outcome = Outcome(
            spec.tenant_id,
            spec.job_id,
            self.owner,
            run.attempt,
            status,
            result,
            code,
            message,
            dict(run.usage),
            (final, end),
        )
        span = trace.get_current_span()
        span.set_attribute("agent_fabric.status", status.value)
        span.set_attribute("agent_fabric.attempt", run.attempt)
        if code is not None:
            span.set_status(StatusCode.ERROR, f"{code}: {message}"[:300])
        # While the database is unreachable the outcome waits for it (this process still holds the
        # message and renews the task's lease, so handing it back could not let anyone else finish
        # it); other errors get the usual few retries, then the message goes back.
        ok, record = await _retrying(
            lambda: write_through_outage(
                lambda: self.store.finish(outcome, urgent=spec.priority is Priority.CRITICAL),
                what="outcome",
                job_id=spec.job_id,
            ),
            what="record outcome",
            job_id=spec.job_id,
        )
        if not ok:
            await delivery.nak(delay=1.0)  # the database stayed down: run again later, nothing lost
            return
        if record is None:
            # Our lease lapsed and another attempt owns the task now; its delivery will finish it.
            log.warning("outcome not recorded: task taken over", extra={"job_id": spec.job_id})
            return
        self._task_counted(spec.agent_definition.label, status.value)
        log.debug("task finished", extra={"status": status.value, "code": code, "elapsed_s": round(elapsed, 6)})
        for row in (final, end):
            await self._publish_live(run, row)
        await self._publish_and_ack(delivery, record)

    def driving(self) -> list[tuple[str, str]]:
        """(tenant_id, job_id) of the tasks this process holds from claim to outcome: the leases it renews."""
        return list(self._driving)

    def cancel_local(self, tenant_id: str, job_id: str, message: str) -> bool:
        """Stop a task this process holds; it ends `cancelled` with `message`. False if not held here."""
        driving = self._driving.get((tenant_id, job_id))
        if driving is None:
            return False
        driving.cancel(message)
        return True

    def fail_local(self, tenant_id: str, job_id: str, code: str, message: str) -> bool:
        """Stop a task this process holds; it ends `failed` with `code`. False if not held here."""
        driving = self._driving.get((tenant_id, job_id))
        if driving is None:
            return False
        driving.fail(code, message)
        return True

    async def model_endpoint(self, spec: TaskSpec) -> dict[str, str]:
        if self.llm is None:
            raise TaskFailure("llm_gateway_unavailable", "this fabric runs no LLM gateway")
        timeout = spec.timeout_seconds or self.settings.worker.default_timeout_seconds
        return await self.llm.endpoint_for(spec, timeout)

    async def _publish_and_ack(self, delivery: Delivery, record: TaskRecord, *, again: bool = False) -> None:
        """`again`: the result may already be in the stream (this is a later delivery of a finished
        task). Every retry is treated so too: its first copy may have landed without an ack."""
        context = trace_attributes(trace.get_current_span())
        attempts = 0

        async def publish() -> None:
            nonlocal attempts
            attempts += 1
            await self.results.publish_result(record, context, again=again or attempts > 1)

        published, _ = await _retrying(publish, what="publish result", job_id=record.job_id)
        if not published:
            await delivery.nak(delay=1.0)  # redelivery finds the outcome and publishes it then
            return
        # Ack first, then note the publish: only a crash between publish and ack (microseconds)
        # can re-publish, and a re-publish carries the same event id (the stream drops it).
        await delivery.ack()
        self._mark_published_later(record)

    def _mark_published_later(self, record: TaskRecord) -> None:
        """Note the publish in the background. One task writes every mark queued meanwhile in one
        submit (a task, a retry loop and a writer future per result cost more than the write)."""
        key = (record.tenant_id, record.job_id)
        self._publishing.add(key)
        self._marks.append(key)
        if self._marking is None or self._marking.done():
            self._marking = task = asyncio.create_task(self._write_marks(), name="mark-published")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _write_marks(self) -> None:
        while self._marks:
            keys, self._marks = self._marks, []
            try:
                await _retrying(
                    functools.partial(self.store.mark_published, keys),
                    what="mark published",
                    job_id=f"{len(keys)} tasks",
                )
            finally:
                self._publishing.difference_update(keys)

    async def drain_background(self) -> None:
        """Wait for the writes that follow acks (called at shutdown, before the batcher stops)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _not_ours(self, delivery: Delivery, current: TaskRecord | None) -> None:
        if current is None:
            await delivery.nak(delay=1.0)
            return
        if current.status.is_terminal:
            self.metrics.duplicates.inc()
            if current.result_published or (current.tenant_id, current.job_id) in self._publishing:
                await delivery.ack()
            elif _recently(current.finished_at, RESULT_MARK_GRACE_SECONDS):
                # Another replica has probably just published and is still noting it: look again
                # after the grace period, and publish then only if the note never came.
                await delivery.nak(delay=RESULT_MARK_GRACE_SECONDS)
            else:
                await self._publish_and_ack(delivery, current, again=True)
            return
        if current.status == TaskStatus.WAITING:
            # Parked until its dependencies complete; their release puts it back on the stream.
            await delivery.ack()
            return
        if delivery.event.id == current.event_id:
            # This very message came back while a live owner still runs it (its in_progress was
            # lost): keep it, try again once the lease could have lapsed.
            await delivery.nak(delay=self.settings.nats.ack_wait_seconds / 2)
            return
        # Another submission of a job that is already running elsewhere: the runner's own
        # message covers it, so this copy is done.
        self.metrics.duplicates.inc()
        await delivery.ack()

    async def _hand_back(self, delivery: Delivery, spec: TaskSpec) -> None:
        try:
            await self.store.release(spec.tenant_id, spec.job_id, self.owner)
        finally:
            await delivery.nak(delay=0)

    async def emit(self, run: _Run, row: EventRow) -> None:
        spec = run.spec
        await write_through_outage(
            lambda: self.store.add_event(spec.tenant_id, spec.job_id, row), what="progress", job_id=spec.job_id
        )
        await self._publish_live(run, row)

    async def _publish_live(self, run: _Run, row: EventRow) -> None:
        await self.bus.publish(
            {
                "id": f"{row.attempt}-{row.n}",
                "job_id": run.spec.job_id,
                "tenant_id": run.spec.tenant_id,
                "kind": row.kind,
                "status": row.status,
                "data": row.data,
                "time": row.created_at.isoformat().replace("+00:00", "Z"),
            }
        )

    def _agent_started(self, label: str) -> None:
        self._active_agents[label] += 1
        self._running += 1

    def _agent_finished(self, label: str) -> None:
        self._active_agents[label] -= 1
        if self._active_agents[label] <= 0:
            del self._active_agents[label]
        self._running -= 1

    def _task_counted(self, label: str, status: str) -> None:
        counter = self._totals.get((label, status))
        if counter is None:
            counter = self._totals[(label, status)] = self.metrics.tasks_total.labels(label, status)
        counter.inc()


def _stopping() -> bool:
    """Whether the worker itself is being cancelled (shutdown), not only the driver's task."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _recently(moment: datetime | None, seconds: float) -> bool:
    return moment is not None and (utcnow() - moment).total_seconds() < seconds


async def _retrying(fn: Callable[[], Awaitable[Any]], *, what: str, job_id: str) -> tuple[bool, Any]:
    """Retry a write that must happen (database or NATS briefly away): (succeeded, result)."""
    for delay in (*_RETRY_DELAYS, None):
        try:
            return True, await fn()
        except Exception as exc:
            if delay is None:
                log.error(
                    "%s failed, giving the task back to JetStream", what, extra={"job_id": job_id, "error": str(exc)}
                )
                break
            log.warning("%s failed, retrying", what, extra={"job_id": job_id, "error": str(exc), "in_s": delay})
            await asyncio.sleep(delay)
    return False, None

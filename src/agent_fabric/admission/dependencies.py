"""Task dependencies (`depends_on`): hold a task until every dependency completed, in the database.

The gate runs at admission, before the approval gate and the budget (a task is asked about and
charged only once it could run), the same at both doors:
- a dependency already failed: the task is recorded `failed` (`dependency_failed`) at once;
- all completed: the task goes on as any other;
- otherwise the task is parked: status `waiting`, its edges in `task_dependencies`, its
  CloudEvent kept, a deadline (`wait_until`) for dependencies that do not exist yet; over NATS
  the message is acked. A cycle through stored edges is refused (`dependency_cycle`).
Whenever tasks end, in the transaction that ends them (`on_tasks_finished`: the task store's
finish and reject hooks, approval conclusions, cancellation), their waiting dependents are
released (waiting -> queued, their CloudEvent back on agent.execute.<priority> through the
outbox) or failed (`dependency_failed`, result through the outbox), and failures cascade. Any
replica's sweep fails tasks still missing a dependency at their deadline (`dependency_missing`).

Races. A finish that reads the edges before a new waiting task committed cannot see it, so after
parking, the gate evaluates the task once more in a fresh transaction that takes its existing
dependencies FOR SHARE NOWAIT (Postgres; retried while a finish holds one): it then either sees
the finish or the finish sees it. Evaluations lock the waiting task itself, so of two finishes
fanning in on one task, the later one sees the earlier.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric import names
from agent_fabric.admission.dependency_graph import CycleWalk, Verdict, judge, unique
from agent_fabric.events.envelope import TRACE_KEYS, TaskEvent
from agent_fabric.outbound.results import result_event
from agent_fabric.periodic import Periodic, until_short
from agent_fabric.settings import SchedulerSettings
from agent_fabric.storage import dependency_store as store
from agent_fabric.storage.outbox import OutboxMessage, enqueue
from agent_fabric.storage.task_store import TaskRecord, spec_hash, utcnow
from agent_fabric.storage.task_transitions import current_task
from agent_fabric.tasks import TaskStatus

log = logging.getLogger(__name__)

SWEEP_BATCH = 100
# Postgres: lock_not_available (a NOWAIT lock met a finish in flight), deadlock, serialization.
_RETRYABLE = {"55P03", "40P01", "40001"}
_RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gate:
    verdict: Literal["run", "waiting", "settled"]
    created: bool = False


class Dependencies:
    def __init__(self, engine: AsyncEngine, cfg: SchedulerSettings) -> None:
        self._engine = engine
        self._cfg = cfg
        self._sweeper = Periodic("dependency-sweep", cfg.sweep_seconds, until_short(self.sweep, SWEEP_BATCH))

    # -- admission --

    async def admit(self, task: TaskEvent) -> Gate:
        """run / waiting / settled (failed at once). Raises InvalidTask for a cycle."""
        spec = task.spec
        gate = await _retrying(lambda: self._gate(task), what="dependency gate", job_id=spec.job_id)
        if gate.verdict == "waiting":
            # Also for a redelivery of a waiting task: it makes sure no finish was missed.
            await self.evaluate(spec.tenant_id, spec.job_id)
        return gate

    async def _gate(self, task: TaskEvent) -> Gate:
        spec = task.spec
        deps = unique(spec.depends_on)
        now = utcnow()
        async with self._engine.begin() as conn:
            await store.serialize_tenant(conn, spec.tenant_id)
            existing = await current_task(conn, spec.tenant_id, spec.job_id)
            # A first arrival has no row (HTTP door) or the queued row the NATS door records as it
            # fetches; the gate's edges mark a task that passed here before.
            first = existing is None or (
                existing.status == TaskStatus.QUEUED and not await store.gated(conn, spec.tenant_id, spec.job_id)
            )
            if existing is not None and not first:
                return Gate("waiting" if existing.status == TaskStatus.WAITING else "run")
            await store.add_edges(conn, spec.tenant_id, spec.job_id, deps)
            walk = CycleWalk(spec.job_id, deps)
            while not walk.done:
                walk.feed(await store.live_edges(conn, spec.tenant_id, walk.frontier))
            refusal = walk.refusal(spec.tenant_id)
            if refusal is not None:
                raise refusal  # rolls the edges back
            verdict = judge(deps, await store.states(conn, spec.tenant_id, deps), due=False)
            if verdict.kind == "release":
                return Gate("run")
            hash_ = spec_hash(spec)
            if verdict.kind == "fail":
                assert verdict.code is not None and verdict.message is not None
                record = await store.insert_failed(conn, spec, hash_, task.id, verdict.code, verdict.message, now)
                if record is None:
                    return Gate("run")  # the job id was taken meanwhile: the usual duplicate handling
                await enqueue(conn, _result(record))
                await self.on_tasks_finished(conn, [record])
                return Gate("settled", created=True)
            # Always a deadline at first: the evaluation right after this clears it when no
            # dependency is missing; if that evaluation never runs, the sweep looks again then.
            until = now + timedelta(seconds=self._cfg.dependency_wait_seconds)
            created = await store.insert_waiting(conn, task, hash_, now, until, _note(deps, verdict))
            return Gate("waiting", created) if created else Gate("run")

    # -- evaluation of one waiting task (after parking, and by the sweep) --

    async def evaluate(self, tenant_id: str, job_id: str, *, due: bool = False) -> None:
        """Release or fail a waiting task if its dependencies say so; `due`: its deadline passed.
        Best effort: a failure is logged and the task's deadline brings the sweep back to it."""
        try:
            await _retrying(lambda: self._evaluate(tenant_id, job_id, due), what="dependency check", job_id=job_id)
        except Exception as exc:
            log.warning("dependency check failed; the sweep retries", extra={"job_id": job_id, "error": str(exc)})

    async def _evaluate(self, tenant_id: str, job_id: str, due: bool) -> None:
        async with self._engine.begin() as conn:
            deps = await store.depends_on(conn, tenant_id, job_id)
            await store.states(conn, tenant_id, deps, lock=True)  # Postgres: wait out finishes in flight
            record = await store.touch_waiting(conn, tenant_id, job_id)
            if record is None:
                return
            ordered = unique(record.spec.get("depends_on") or deps)
            verdict = judge(ordered, await store.states(conn, tenant_id, ordered), due=due)
            if verdict.kind == "wait":
                if not verdict.missing:
                    await store.set_deadline(conn, tenant_id, job_id, None)  # all exist: no deadline
                return
            await self._apply(conn, record, verdict, utcnow())

    # -- the finish hook --

    async def on_tasks_finished(self, conn: AsyncConnection, records: Sequence[TaskRecord]) -> None:
        """A FinishHook: in the transaction that ends `records`, release or fail their waiting
        dependents, and theirs in turn when they fail. Sends what it writes after that commit."""
        finished = list(records)
        while finished:
            waiting = await store.lock_waiting(
                conn, await store.dependents(conn, [(r.tenant_id, r.job_id) for r in finished])
            )
            if not waiting:
                return
            wanted = [(r.tenant_id, d) for r in waiting for d in _deps_of(r)]
            states = await store.states_by_key(conn, wanted)
            now = utcnow()
            failed: list[TaskRecord] = []
            for record in waiting:
                mine = {d: s for (t, d), s in states.items() if t == record.tenant_id}
                verdict = judge(_deps_of(record), mine, due=False)
                if verdict.kind != "wait":
                    concluded = await self._apply(conn, record, verdict, now, cascade=False)
                    if concluded is not None:
                        failed.append(concluded)
            finished = failed

    async def _apply(
        self, conn: AsyncConnection, record: TaskRecord, verdict: Verdict, now: datetime, *, cascade: bool = True
    ) -> TaskRecord | None:
        """Release or fail one locked waiting task; the failed record (cascaded here if `cascade`)."""
        if verdict.kind == "release":
            released = await store.release(conn, record.tenant_id, record.job_id, now)
            if released is not None:
                envelope = await store.envelope(conn, record.tenant_id, record.job_id)
                await enqueue(conn, _requeue(released, envelope))
            return None
        assert verdict.code is not None and verdict.message is not None
        failed = await store.fail(conn, record.tenant_id, record.job_id, verdict.code, verdict.message, now)
        if failed is None:
            return None
        await enqueue(conn, _result(failed))
        if cascade:
            await self.on_tasks_finished(conn, [failed])
        return failed

    # -- the sweep --

    async def sweep(self) -> int:
        """Look at waiting tasks past their deadline (any replica; each outcome happens once)."""
        async with self._engine.connect() as conn:
            keys = await store.due(conn, utcnow(), SWEEP_BATCH)
        for tenant_id, job_id in keys:
            await self.evaluate(tenant_id, job_id, due=True)
        return len(keys)

    def start(self) -> None:
        self._sweeper.start()

    async def shutdown(self) -> None:
        await self._sweeper.stop()


def _deps_of(record: TaskRecord) -> list[str]:
    return unique(record.spec.get("depends_on") or [])


def _note(deps: Sequence[str], verdict: Verdict) -> dict[str, Any]:
    return {"depends_on": list(deps), "pending": list(verdict.pending), "missing": list(verdict.missing)}


def _result(record: TaskRecord) -> OutboxMessage:
    subject, body, event_id = result_event(record)
    return OutboxMessage(subject, event_id, body)


def _requeue(record: TaskRecord, envelope: dict[str, Any] | None) -> OutboxMessage:
    """The released task's own CloudEvent (same id), back on its priority's subject."""
    envelope = envelope or {}
    body = orjson.dumps(
        {
            **{key: envelope[key] for key in TRACE_KEYS if key in envelope},
            "specversion": "1.0",
            "id": envelope.get("id") or record.event_id or f"{record.tenant_id}/{record.job_id}",
            "source": envelope.get("source") or "agent-fabric/dependencies",
            "type": names.TASK_EVENT_TYPE,
            "datacontenttype": "application/json",
            "data": record.spec,
        }
    )
    return OutboxMessage(
        names.task_subject(record.priority), names.dependency_release_msg_id(record.tenant_id, record.job_id), body
    )


async def _retrying(fn: Callable[[], Awaitable[T]], *, what: str, job_id: str) -> T:
    """Run one transaction again when Postgres refused a lock (a finish in flight) or a deadlock."""
    for delay in (*_RETRY_DELAYS, None):
        try:
            return await fn()
        except (DBAPIError, asyncpg.PostgresError) as exc:
            # asyncpg's own error where the statement went to it directly (storage/pg_raw.py).
            cause = exc.orig if isinstance(exc, DBAPIError) else exc
            if delay is None or getattr(cause, "sqlstate", None) not in _RETRYABLE:
                raise
            log.debug("%s met a lock; retrying", what, extra={"job_id": job_id, "in_s": delay})
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")

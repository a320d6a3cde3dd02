"""Recording tasks as queued, within the queue-depth limits per tenant and per agent.

Both doors go through `QueueStore.enqueue`: the HTTP door before it publishes, the NATS door for every
batch it fetches (a task published straight to NATS has no row until then). A task counts as
queued while its status is `queued` or `waiting` (for dependencies). On Postgres the counting
and inserting run under a transaction-scoped advisory lock per tenant, so two replicas cannot
both take the last place; SQLite has one writer at a time anyway.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.storage.batcher import WriteBatcher
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_rows import insert_new_rows
from agent_fabric.storage.task_store import (
    EventRow,
    TaskRecord,
    _event_dict,
    _insert_events,
    _new_row,
    _select_rows,
    utcnow,
)
from agent_fabric.tasks import Priority, TaskSpec, TaskStatus
from agent_fabric.telemetry.operation_metrics import OperationMetrics

QUEUED = TaskStatus.QUEUED.value
QUEUED_STATUSES = (QUEUED, TaskStatus.WAITING.value)
COUNT_TTL_SECONDS = 1.0
LIMIT_MARGIN = 0.9
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    per_tenant: int = 0  # 0: no limit
    per_agent: int = 0

    @property
    def active(self) -> bool:
        return bool(self.per_tenant or self.per_agent)


@dataclass(frozen=True, slots=True)
class Enqueue:
    spec: TaskSpec
    spec_hash: str
    event_id: str | None
    limits: QueueLimits
    now: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.tenant_id, self.spec.job_id)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """`inserted`: recorded as queued now. Else `existing` is the task's row (None if another
    replica inserted it a moment ago), or `full` says which limit refused it."""

    inserted: bool
    existing: TaskRecord | None = None
    full: str | None = None


async def _record(conn: AsyncConnection, items: Sequence[Enqueue], counts: QueueCounts) -> list[Enqueued]:
    # Insert first and look rows up only for what did not go in (a redelivery, a task the HTTP
    # door recorded, a refusal): the common batch is one INSERT, with no read before it.
    limits = items[0].limits
    verdicts: dict[tuple[str, str], str | None] = {item.key: None for item in items}
    existing: dict[tuple[str, str], TaskRecord] = {}
    if limits.active:
        by_tenant, by_agent = await counts.current(conn, limits, items)
        verdicts = _place(items, by_tenant.copy(), by_agent.copy())
        if any(full is not None for full in verdicts.values()):
            # Near a limit. A task that exists already (a redelivery, or a task the HTTP door
            # recorded before publishing it) is in the count once; placing it again would
            # refuse a new task in its stead. So here, and only here, read before inserting.
            existing = await _select_rows(conn, list(verdicts))
            verdicts = _place([i for i in items if i.key not in existing], by_tenant, by_agent)
            verdicts.update(dict.fromkeys(existing))
    over = {key: full for key, full in verdicts.items() if full is not None}
    firsts: dict[tuple[str, str], Enqueue] = {}
    for item in items:
        firsts.setdefault(item.key, item)
    new = [item for key, item in firsts.items() if key not in over and key not in existing]
    inserted: set[tuple[str, str]] = set()
    if new:
        inserted = await insert_new_rows(conn, [_new_row(i.spec, i.spec_hash, i.event_id, i.now) for i in new])
        await _insert_events(
            conn,
            [
                _event_dict(i.spec.tenant_id, i.spec.job_id, EventRow(0, 0, "state", QUEUED, None, i.now))
                for i in new
                if i.key in inserted
            ],
        )
        counts.added([i for i in new if i.key in inserted])
    lookup = [key for key in verdicts if key not in inserted and key not in existing]
    if lookup:
        existing.update(await _select_rows(conn, lookup))
    results: list[Enqueued] = []
    first: set[tuple[str, str]] = set()
    for item in items:
        key = (item.spec.tenant_id, item.spec.job_id)
        if key in inserted and key not in first:
            first.add(key)
            results.append(Enqueued(True))
        elif key in existing or key in inserted:
            # Known already (refused or not, an existing task is never refused for its queue).
            results.append(Enqueued(False, existing.get(key)))
        elif key in over:
            results.append(Enqueued(False, full=over[key]))
        else:
            results.append(Enqueued(False))  # inserted by another replica and gone again meanwhile
    return results


async def _room(conn: AsyncConnection, items: Sequence[Enqueue], counts: QueueCounts) -> list[str | None]:
    """Which limit a task would break if it were queued now (None: it fits, or it exists already)."""
    existing = await _select_rows(conn, list(dict.fromkeys(i.key for i in items)))
    fresh = [i for i in items if i.key not in existing]
    # Exact counts: these tasks are recorded by another gate, which the reused counts do not see;
    # and the next enqueue() of these tenants counts again for the same reason.
    tenants = sorted({i.spec.tenant_id for i in fresh})
    counts.forget(tenants)
    by_tenant, by_agent = await counts.current(conn, items[0].limits, fresh) if fresh else (Counter(), Counter())
    counts.forget(tenants)
    verdicts = _place(fresh, by_tenant, by_agent)
    return [verdicts.get(i.key) for i in items]


def _place(
    items: Sequence[Enqueue], by_tenant: Counter[str], by_agent: Counter[tuple[str, str]]
) -> dict[tuple[str, str], str | None]:
    """Each distinct task in turn against the limits, counting those that fit: key -> None if it
    fits, else the limit it breaks. Mutates the counts."""
    verdicts: dict[tuple[str, str], str | None] = {}
    for item in items:
        if item.key in verdicts:
            continue
        spec = item.spec
        agent_key = (spec.tenant_id, spec.agent_definition.label)
        full = _over_limit(item.limits, spec, by_tenant[spec.tenant_id], by_agent[agent_key])
        if full is None:
            by_tenant[spec.tenant_id] += 1
            by_agent[agent_key] += 1
        verdicts[item.key] = full
    return verdicts


class QueueCounts:
    """Queued tasks per tenant and agent, as far as this process knows.

    Counting a tenant's queued rows costs O(its backlog), too much for every batch of a flood.
    A count is reused for up to COUNT_TTL_SECONDS (plus what this process added since) while the
    batch stays below LIMIT_MARGIN of every limit; nearer a limit it is counted again, under the
    tenant's advisory lock, so the limit itself is exact. What other replicas queued in the reuse
    window is the only thing a reused count misses, and it cannot carry a tenant past the margin
    unless they queue more than 10 % of the limit within a second. Tasks that left the queue are
    not subtracted locally, so a reused count errs high, toward a recount, never toward a refusal.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[str, tuple[float, Counter[str]]] = {}

    async def current(
        self, conn: AsyncConnection, limits: QueueLimits, fresh: Sequence[Enqueue]
    ) -> tuple[Counter[str], Counter[tuple[str, str]]]:
        now = self._clock()
        wanted: Counter[str] = Counter(i.spec.tenant_id for i in fresh)
        wanted_agent: Counter[tuple[str, str]] = Counter(
            (i.spec.tenant_id, i.spec.agent_definition.label) for i in fresh
        )
        stale = sorted(t for t in wanted if not self._reusable(t, now, limits, wanted[t], wanted_agent))
        if stale:
            if conn.dialect.name == "postgresql":
                for tenant in stale:  # sorted: two replicas lock in the same order, no deadlock
                    await conn.execute(_LOCK, {"key": f"agent-fabric:queue:{tenant}"})
            by_agent = await _queued_counts(conn, stale)
            for tenant in stale:
                self._known[tenant] = (now, Counter({a: n for (t, a), n in by_agent.items() if t == tenant}))
        tenant_totals: Counter[str] = Counter()
        agent_totals: Counter[tuple[str, str]] = Counter()
        for tenant in wanted:
            agents = self._known[tenant][1]
            tenant_totals[tenant] = sum(agents.values())
            for agent, n in agents.items():
                agent_totals[(tenant, agent)] = n
        return tenant_totals, agent_totals

    def forget(self, tenants: Sequence[str]) -> None:
        for tenant in tenants:
            self._known.pop(tenant, None)

    def added(self, items: Sequence[Enqueue]) -> None:
        for item in items:
            known = self._known.get(item.spec.tenant_id)
            if known is not None:
                known[1][item.spec.agent_definition.label] += 1

    def _reusable(
        self, tenant: str, now: float, limits: QueueLimits, adding: int, adding_agent: Counter[tuple[str, str]]
    ) -> bool:
        known = self._known.get(tenant)
        if known is None or now - known[0] > COUNT_TTL_SECONDS:
            return False
        agents = known[1]
        if limits.per_tenant and sum(agents.values()) + adding > LIMIT_MARGIN * limits.per_tenant:
            return False
        if limits.per_agent:
            for (t, agent), n in adding_agent.items():
                if t == tenant and agents[agent] + n > LIMIT_MARGIN * limits.per_agent:
                    return False
        return True


async def _queued_counts(conn: AsyncConnection, tenants: list[str]) -> Counter[tuple[str, str]]:
    stmt = (
        select(tasks.c.tenant_id, tasks.c.agent_label, func.count())
        .where(tasks.c.tenant_id.in_(tenants), tasks.c.status.in_(QUEUED_STATUSES))
        .group_by(tasks.c.tenant_id, tasks.c.agent_label)
    )
    return Counter({(tenant, agent): n for tenant, agent, n in await conn.execute(stmt)})


def _over_limit(limits: QueueLimits, spec: TaskSpec, tenant_queued: int, agent_queued: int) -> str | None:
    if limits.per_tenant and tenant_queued >= limits.per_tenant:
        return f"tenant {spec.tenant_id!r} already has {tenant_queued} queued tasks (limit {limits.per_tenant})"
    if limits.per_agent and agent_queued >= limits.per_agent:
        label = spec.agent_definition.label
        return f"agent {label!r} already has {agent_queued} queued tasks (limit {limits.per_agent})"
    return None


class QueueStore:
    """Both doors record tasks as queued through this. Each priority class has its own writer,
    so a critical task's record never waits behind a batch of a low flood's records."""

    def __init__(
        self,
        engine: AsyncEngine,
        limits: QueueLimits,
        *,
        linger_ms: float,
        max_items: int,
        metrics: OperationMetrics | None = None,
    ) -> None:
        self.limits = limits
        self._counts = QueueCounts()
        self._writers = {
            priority: WriteBatcher(
                engine,
                linger_ms=linger_ms,
                max_items=max_items,
                flushers=1,
                metrics=metrics,
                name=f"queue-{priority.value}",
            )
            for priority in Priority
        }

    def start(self) -> None:
        for writer in self._writers.values():
            writer.start()

    async def shutdown(self) -> None:
        for writer in self._writers.values():
            await writer.shutdown()

    async def _op(self, conn: AsyncConnection, items: Sequence[Enqueue]) -> list[Enqueued]:
        return await _record(conn, items, self._counts)

    async def _room_op(self, conn: AsyncConnection, items: Sequence[Enqueue]) -> list[str | None]:
        return await _room(conn, items, self._counts)

    async def room(self, spec: TaskSpec) -> str | None:
        """For a task another gate records (parked `waiting` for its dependencies): the limit it
        would break, else None. Counted like enqueue(), without recording anything."""
        if not self.limits.active:
            return None
        verdict: str | None = await self._writers[spec.priority].submit(
            self._room_op, Enqueue(spec, "", None, self.limits)
        )
        return verdict

    async def enqueue(self, spec: TaskSpec, hash_: str, event_id: str | None) -> Enqueued:
        writer = self._writers[spec.priority]
        result: Enqueued = await writer.submit(self._op, Enqueue(spec, hash_, event_id, self.limits))
        return result

"""The fair run queue: which held task starts next when a worker slot frees. Pure, no I/O.

Held tasks wait in groups, one per (priority class, tenant); inside a group, one FIFO per agent,
served in rotation (the agent served least recently first, skipping agents at their running
cap). On every pick the candidate of each group whose tenant is under its running cap is
compared by, in this order:

1. effective class: the task's class (critical 0 .. low 3) minus one for every `ageing_seconds`
   it has waited, never below 0. So a critical task goes before any fresher low task, and under
   a sustained flood of urgent work a low task competes as high after 2 x ageing and as
   critical after 3 x ageing (the older task wins a tie), so it cannot starve;
2. tenant turn: the tenant served least recently goes first (a tenant never served yet goes
   before everyone). One tenant's 10,000 held tasks therefore delay another tenant's single
   task by one pick at most;
3. arrival order.
(The agent turn within the tenant is the group's rotation.)

A pick scans the groups, so it costs O(classes x tenants with held work), not O(agents);
scripts/bench/scheduling.py measures it.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

GroupKey = tuple[int, str]  # (class rank, tenant)
Cap = Callable[[str], int]  # running cap for a tenant or agent; 0 means none


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    rank: int
    tenant: str
    agent: str
    enqueued: float
    seq: int


@dataclass(slots=True)
class _Group(Generic[T]):
    """One class of one tenant: a FIFO per agent, and the agents' turn order."""

    agents: dict[str, deque[_Entry[T]]] = field(default_factory=dict)
    rotation: deque[str] = field(default_factory=deque)

    def candidate(self, may_run: Callable[[str], bool]) -> str | None:
        for agent in self.rotation:
            if may_run(agent):
                return agent
        return None

    def take(self, agent: str) -> _Entry[T]:
        lane = self.agents[agent]
        entry = lane.popleft()
        self.rotation.remove(agent)
        if lane:
            self.rotation.append(agent)  # served: to the back of the turn order
        else:
            del self.agents[agent]
        return entry


@dataclass(slots=True)
class Picked(Generic[T]):
    item: T
    tenant: str
    agent: str
    effective_rank: int


def _no_cap(_: str) -> int:
    return 0


@dataclass
class FairQueue(Generic[T]):
    ageing_seconds: float
    tenant_cap: Cap = _no_cap
    agent_cap: Cap = _no_cap
    clock: Callable[[], float] = time.monotonic
    _groups: dict[GroupKey, _Group[T]] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    _turn: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _tenant_served: dict[str, int] = field(default_factory=dict)
    running_by_tenant: Counter[str] = field(default_factory=Counter)
    running_by_agent: Counter[str] = field(default_factory=Counter)
    held_by_tenant: Counter[str] = field(default_factory=Counter)
    held_by_rank: Counter[int] = field(default_factory=Counter)
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def push(self, item: T, *, rank: int, tenant: str, agent: str) -> None:
        entry = _Entry(item, rank, tenant, agent, self.clock(), next(self._seq))
        group = self._groups.get((rank, tenant))
        if group is None:
            group = self._groups[(rank, tenant)] = _Group()
        lane = group.agents.get(agent)
        if lane is None:
            lane = group.agents[agent] = deque()
            group.rotation.append(agent)
        lane.append(entry)
        self.held_by_tenant[tenant] += 1
        self.held_by_rank[rank] += 1
        self._size += 1

    def effective_rank(self, rank: int, waited: float) -> int:
        return max(0, rank - int(waited / self.ageing_seconds))

    def pop(self, max_rank: int | None = None) -> Picked[T] | None:
        """The next task to start, counted as running until done(); None if none may start.
        `max_rank`: only a task whose effective class is at most this (a reserved critical slot)."""
        now = self.clock()
        best: tuple[int, int, int] | None = None
        best_pick: tuple[GroupKey, str] | None = None
        for key, group in self._groups.items():
            if not self._tenant_may_run(key[1]):
                continue
            agent = group.candidate(self._agent_may_run)
            if agent is None:
                continue
            head = group.agents[agent][0]
            effective = self.effective_rank(head.rank, now - head.enqueued)
            if max_rank is not None and effective > max_rank:
                continue
            order = (
                effective,
                self._tenant_served.get(head.tenant, 0),
                head.seq,
            )
            if best is None or order < best:
                best, best_pick = order, (key, agent)
        if best is None or best_pick is None:
            return None
        key, agent = best_pick
        group = self._groups[key]
        entry = group.take(agent)
        if not group.agents:
            del self._groups[key]
        self._forget(entry)
        self._tenant_served[entry.tenant] = next(self._turn)
        self.running_by_tenant[entry.tenant] += 1
        self.running_by_agent[entry.agent] += 1
        return Picked(entry.item, entry.tenant, entry.agent, best[0])

    def done(self, tenant: str, agent: str) -> None:
        """A picked task finished (or was handed back): its tenant and agent may run one more."""
        _decrement(self.running_by_tenant, tenant)
        _decrement(self.running_by_agent, agent)
        if not self.running_by_tenant.get(tenant) and not self.held_by_tenant.get(tenant):
            # Forget the turns of a tenant with nothing running or held, so the maps stay bounded
            # by the active tenants; a returning tenant is served first, as a new one would be.
            self._tenant_served.pop(tenant, None)

    def remove(self, match: Callable[[T], bool]) -> list[T]:
        """Take out every held task `match` selects (cancelled, or handed back at shutdown)."""
        taken: list[T] = []
        for key in list(self._groups):
            group = self._groups[key]
            for agent in list(group.agents):
                lane = group.agents[agent]
                keep = deque(e for e in lane if not match(e.item))
                if len(keep) == len(lane):
                    continue
                for entry in lane:
                    if match(entry.item):
                        taken.append(entry.item)
                        self._forget(entry)
                if keep:
                    group.agents[agent] = keep
                else:
                    del group.agents[agent]
                    group.rotation.remove(agent)
            if not group.agents:
                del self._groups[key]
        return taken

    @property
    def groups(self) -> int:
        return len(self._groups)

    def _tenant_may_run(self, tenant: str) -> bool:
        cap = self.tenant_cap(tenant)
        return not (cap and self.running_by_tenant[tenant] >= cap)

    def _agent_may_run(self, agent: str) -> bool:
        cap = self.agent_cap(agent)
        return not (cap and self.running_by_agent[agent] >= cap)

    def _forget(self, entry: _Entry[T]) -> None:
        _decrement(self.held_by_tenant, entry.tenant)
        _decrement(self.held_by_rank, entry.rank)
        self._size -= 1


K = TypeVar("K")


def _decrement(counter: Counter[K], key: K) -> None:
    value = counter.get(key, 0) - 1
    if value > 0:
        counter[key] = value
    else:
        counter.pop(key, None)

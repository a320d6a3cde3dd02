"""The rules of `depends_on`, without I/O: may a waiting task run, must it fail, does it close a cycle.

A task runs once every dependency is `completed`. A dependency that ended `failed`, `cancelled`,
`timed_out` or `rejected` fails it (`dependency_failed`, naming that dependency). A dependency
that does not exist yet is waited for until the task's deadline, then fails it
(`dependency_missing`). Cycles are found by walking the stored edges from a new task's
dependencies: the task that closes a cycle is always the last of its members to arrive, so
checking each arrival finds every cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from agent_fabric.errors import InvalidTask
from agent_fabric.tasks import TaskSpec, TaskStatus

FAILURE_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT, TaskStatus.REJECTED})
# How many upstream tasks one arrival's cycle walk may visit. Past it the task is refused
# (`dependency_graph_too_large`): a cycle could not be ruled out, and one admitted would wait forever.
WALK_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class DepState:
    """A dependency as it stands in the database."""

    status: TaskStatus
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """release: every dependency completed; fail: one failed or never appeared; wait: not yet."""

    kind: Literal["release", "fail", "wait"]
    code: str | None = None
    message: str | None = None
    missing: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


def unique(depends_on: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(depends_on))


def judge(depends_on: Sequence[str], states: Mapping[str, DepState], *, due: bool) -> Verdict:
    """What a task with these dependencies does now. `due`: its deadline for missing ones passed."""
    for dep in depends_on:
        state = states.get(dep)
        if state is not None and state.status in FAILURE_STATUSES:
            detail = f" ({state.error_code})" if state.error_code else ""
            return Verdict("fail", "dependency_failed", f"dependency {dep!r} ended {state.status.value}{detail}")
    missing = tuple(dep for dep in depends_on if dep not in states)
    if missing and due:
        listed = ", ".join(repr(dep) for dep in missing)
        return Verdict("fail", "dependency_missing", f"dependencies never submitted before the wait ended: {listed}")
    pending = tuple(dep for dep in depends_on if dep in states and states[dep].status != TaskStatus.COMPLETED)
    if not missing and not pending:
        return Verdict("release")
    return Verdict("wait", missing=missing, pending=pending)


class CycleWalk:
    """Breadth-first from a new task's dependencies along stored edges (task -> its dependencies),
    looking for the new task itself. Feed it the edges of each frontier until `done`."""

    def __init__(self, job_id: str, depends_on: Iterable[str], limit: int = WALK_LIMIT) -> None:
        self.job_id = job_id
        self.limit = limit
        self.cycle: list[str] | None = None
        self.overflow = False
        # Each reached task -> the task that depends on it, on the way back to job_id.
        self._via: dict[str, str] = {}
        for dep in unique(depends_on):
            if dep == job_id:
                self.cycle = [job_id, job_id]
            self._via.setdefault(dep, job_id)
        self.frontier: list[str] = [] if self.cycle else sorted(self._via)

    @property
    def visited(self) -> int:
        return len(self._via)

    @property
    def done(self) -> bool:
        return self.cycle is not None or self.overflow or not self.frontier

    def feed(self, edges: Iterable[tuple[str, str]]) -> None:
        """The stored (job, depends_on) edges of the current frontier's tasks."""
        following: list[str] = []
        for job, dep in sorted(edges):
            if dep == self.job_id:
                self.cycle = self._path(job)
                return
            if dep in self._via:
                continue
            self._via[dep] = job
            if len(self._via) > self.limit:
                self.overflow = True
                return
            following.append(dep)
        self.frontier = following

    def _path(self, last: str) -> list[str]:
        chain = [last]
        while chain[-1] != self.job_id:
            chain.append(self._via[chain[-1]])
        chain.reverse()
        return [*chain, self.job_id]

    def refusal(self, tenant_id: str) -> InvalidTask | None:
        """The InvalidTask that refuses the task, or None when it closes no cycle."""
        if self.cycle is not None:
            return InvalidTask(
                f"depends_on closes a dependency cycle: {' -> '.join(self.cycle)}",
                code="dependency_cycle",
                job_id=self.job_id,
                tenant_id=tenant_id,
            )
        if self.overflow:
            return InvalidTask(
                f"more than {self.limit} unfinished tasks upstream of {self.job_id!r}: a cycle cannot be ruled "
                "out, so the task is refused",
                code="dependency_graph_too_large",
                job_id=self.job_id,
                tenant_id=tenant_id,
            )
        return None


def refuse_self_dependency(spec: TaskSpec) -> None:
    """Refuse a task that depends on itself (the shortest cycle), before anything is stored."""
    if spec.job_id in spec.depends_on:
        walk = CycleWalk(spec.job_id, spec.depends_on)
        refusal = walk.refusal(spec.tenant_id)
        assert refusal is not None
        raise refusal

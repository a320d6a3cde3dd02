"""The processes of one agent on this replica: warm pool, demand scaling, restarts, crash loops.

One maintainer task per pool is the only place that starts processes. It keeps
`min(max_processes, busy + waiting + min_idle)` of them, so a task usually finds one already
`ready` (FR-LIFE-6), demand grows the pool up to `max_processes`, and a process that died is
replaced. Failures in a row (an unexpected exit, three missed heartbeats, no `ready` in time)
delay the next start exponentially (backoff_base * 2^(n-1), capped at backoff_max); at
`max_restarts` the agent stays `failed` with the reason and waiting tasks are told so. A process
that completes a task, or stays up a minute, resets the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent_fabric.agents.agent_process import AgentProcess, ProcState
from agent_fabric.agents.error_rate import ErrorRate
from agent_fabric.agents.process_spec import ProcessAgent

log = logging.getLogger(__name__)

STABLE_SECONDS = 60.0

Spawn = Callable[[str], Awaitable[AgentProcess]]
Ended = Callable[[AgentProcess, bool], Awaitable[None]]
Failed = Callable[[str, int], Awaitable[None]]
Alarm = Callable[[int, float], Awaitable[None]]  # (errors in the window, window seconds)


class AgentUnavailable(Exception):
    """The agent takes no tasks here: stopped, draining or failed (the message says which and why)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AgentPool:
    def __init__(
        self, agent: ProcessAgent, spawn: Spawn, on_end: Ended, on_failed: Failed, on_error_rate: Alarm
    ) -> None:
        self.agent = agent
        self.status = "running"
        self.reason: str | None = None
        self.failures = 0  # in a row
        self.restarts = 0  # processes started to replace one that failed
        self.failures_total = 0  # every process failure, for the error-rate metric
        self.tasks_total = 0  # tasks whose outcome a process reported
        self.processes: dict[str, AgentProcess] = {}
        self._spawn = spawn
        self._on_end = on_end
        self._on_failed = on_failed
        self._on_error_rate = on_error_rate
        self._errors = ErrorRate(agent.runtime.alert_errors, agent.runtime.alert_window)
        self._waiting = 0
        self._serial = 0
        self._not_before = 0.0
        self._changed = asyncio.Event()
        self.ended = asyncio.Event()  # set once stop() has ended every process
        self._freed = asyncio.Condition()
        self._maintainer: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name=f"pool {self.agent.id}")

    # -- tasks --

    async def acquire(self) -> AgentProcess:
        """An idle, ready process, marked busy; waits while all are busy or starting."""
        self._waiting += 1
        self._changed.set()
        try:
            async with self._freed:
                while True:
                    if self.status != "running":
                        raise AgentUnavailable(self.status, self.reason or f"agent is {self.status}")
                    for proc in self.processes.values():
                        if proc.state == ProcState.IDLE and proc.alive:
                            proc.state = ProcState.BUSY
                            return proc
                    await self._freed.wait()
        finally:
            self._waiting -= 1

    async def release(self, proc: AgentProcess, *, completed: bool) -> None:
        """The task on `proc` is over; a completed task proves the agent healthy again."""
        proc.job_id = None
        if completed:
            proc.tasks_done += 1
            self.tasks_total += 1
            self.failures = 0
        if proc.alive and proc.state == ProcState.BUSY:
            proc.state = ProcState.IDLE
            proc.idle_since = time.monotonic()
        await self._notify()

    async def _notify(self) -> None:
        self._changed.set()
        async with self._freed:
            self._freed.notify_all()

    # -- the maintainer --

    @property
    def waiting(self) -> int:
        """Tasks waiting for an idle process."""
        return self._waiting

    @property
    def busy(self) -> int:
        return sum(1 for p in self.processes.values() if p.state == ProcState.BUSY)

    def target(self) -> int:
        runtime = self.agent.runtime
        return min(runtime.max_processes, self.busy + self._waiting + runtime.min_idle)

    async def _maintain(self) -> None:
        while self.status == "running":
            self._changed.clear()
            delay = self._not_before - time.monotonic()
            if len(self.processes) < self.target() and delay <= 0:
                await self._start_one()
                continue
            self._shrink()
            wake = self.agent.runtime.idle_timeout / 2
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, wake) if delay > 0 else wake):
                    await self._changed.wait()

    def _shrink(self) -> None:
        """Stop processes idle past idle_timeout while the pool holds more than it needs."""
        surplus = len(self.processes) - self.target()
        cutoff = time.monotonic() - self.agent.runtime.idle_timeout
        for proc in sorted(self.processes.values(), key=lambda p: p.idle_since):
            if surplus <= 0:
                return
            if proc.state == ProcState.IDLE and proc.idle_since < cutoff:
                proc.state = ProcState.DRAINING  # no task is given to it any more
                grace = self.agent.runtime.stop_timeout
                stopping = asyncio.create_task(proc.stop(grace, grace, "idle: the pool shrinks"))
                self._watchers.add(stopping)
                stopping.add_done_callback(self._watchers.discard)
                surplus -= 1

    async def _start_one(self) -> None:
        self._serial += 1
        name = f"{self.agent.id}/{self._serial}"
        try:
            proc = await self._spawn(name)
        except Exception as exc:  # the command is missing, the sandbox refused: a failure like any other
            log.warning("agent process did not start", extra={"agent_id": self.agent.id, "error": str(exc)})
            await self._failed(f"could not start: {exc}")
            return
        self.processes[name] = proc
        watcher = asyncio.create_task(self._watch(proc), name=f"watch {name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        if await proc.wait_ready(self.agent.runtime.ready_timeout):
            if proc.state == ProcState.STARTING:
                proc.state = ProcState.IDLE
                proc.idle_since = time.monotonic()
            await self._notify()
        else:
            if proc.alive:
                proc.kill(f"not ready within {self.agent.runtime.ready_timeout:g} s")
            await watcher  # its failure (and backoff) counts before the next start is considered

    async def _watch(self, proc: AgentProcess) -> None:
        await proc.ended()
        self.processes.pop(proc.name, None)
        failed = not proc.expected_exit
        try:
            await self._on_end(proc, failed)
        finally:
            if failed and self.status == "running":
                if proc.uptime >= STABLE_SECONDS:
                    self.failures = 0
                await self._failed(proc.end_reason or f"exited with code {proc.exit_code}")
            await self._notify()

    async def error(self) -> None:
        """A failed task or process of the agent: alert when they come faster than allowed."""
        burst = self._errors.record(time.monotonic())
        if burst is not None:
            await self._on_error_rate(burst, self._errors.window)

    async def _failed(self, reason: str) -> None:
        self.failures += 1
        self.failures_total += 1
        await self.error()
        if self.failures >= self.agent.runtime.max_restarts:
            self.status, self.reason = "failed", f"crash loop: {self.failures} failures in a row, last: {reason}"
            await self._notify()
            await self._on_failed(self.reason, self.failures)
            return
        runtime = self.agent.runtime
        backoff = min(runtime.backoff_max, runtime.backoff_base * 2 ** (self.failures - 1))
        self._not_before = time.monotonic() + backoff
        self.restarts += 1

    def check_heartbeats(self) -> None:
        """Fail every ready process that missed `missed_heartbeats` in a row (hung, stopped, lost)."""
        runtime = self.agent.runtime
        limit = runtime.heartbeat_interval * runtime.missed_heartbeats
        now = time.monotonic()
        for proc in list(self.processes.values()):
            if proc.alive and proc.last_heartbeat is not None and now - proc.last_heartbeat > limit:
                proc.kill(f"missed {runtime.missed_heartbeats} heartbeats ({limit:g} s without one)")

    # -- stopping --

    async def stop(self, reason: str, *, drain_timeout: float | None = None, status: str = "stopped") -> None:
        """No new tasks; running ones finish within drain_timeout; then SIGTERM, then SIGKILL."""
        self.status, self.reason = "stopping", reason
        await self._notify()
        if self._maintainer is not None:
            # Let a start in progress finish (its process is then stopped with the others): a
            # cancelled start could leave a process nobody tracks.
            try:
                async with asyncio.timeout(self.agent.runtime.ready_timeout + 5):
                    await asyncio.shield(self._maintainer)
            except TimeoutError:
                self._maintainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._maintainer
            self._maintainer = None
        runtime = self.agent.runtime
        drain = runtime.drain_timeout if drain_timeout is None else drain_timeout
        await asyncio.gather(
            *(p.stop(drain, runtime.stop_timeout, reason) for p in list(self.processes.values())),
            return_exceptions=True,
        )
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for proc in list(self.processes.values()):
            await proc.aclose()
        self.status = status
        self.ended.set()
        await self._notify()

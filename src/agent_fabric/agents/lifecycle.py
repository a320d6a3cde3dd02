"""LifecycleManager (seed 001 FR-LIFE-1..6, seed 004 sections 6, 7, 11): the agent processes of
this replica.

Each started agent has a pool (pool.py) inside a sandbox (isolation.py). The manager starts pools
(`spawn`, or on the first task for an agent), watches heartbeats, records every process run as
session history, raises an alert when an agent fails for good, and stops pools gracefully
(`terminate`, and for all of them when the fabric stops). Start/stop/restart asked of one
replica is broadcast, so every replica's processes of that agent follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from nats.aio.client import Client as NatsClient

from agent_fabric import names
from agent_fabric.agents.agent_process import AgentProcess
from agent_fabric.agents.isolation import IsolationManager, Sandbox
from agent_fabric.agents.pool import AgentPool, AgentUnavailable
from agent_fabric.agents.process_alerts import AgentAlerts
from agent_fabric.agents.process_logs import AgentLogs
from agent_fabric.agents.process_spec import ProcessAgent
from agent_fabric.agents.run_history import RunHistory
from agent_fabric.security.internal_seal import InternalSeal
from agent_fabric.security.replica_channel import ReplicaChannel
from agent_fabric.storage.agent_run_store import AgentRunStore

log = logging.getLogger(__name__)

StatusHook = Callable[[str, str, str], Awaitable[None]]  # (agent_id, status, reason)


class AgentDirectory(Protocol):
    """Where the runtime looks an agent up (the registry): None if there is no such agent."""

    async def process_agent(self, agent_id: str) -> ProcessAgent | None: ...


class LifecycleManager:
    def __init__(
        self,
        isolation: IsolationManager,
        runs: AgentRunStore,
        alerts: AgentAlerts,
        nc: NatsClient | None,
        owner: str,
        status_hook: StatusHook | None = None,
        *,
        seal: InternalSeal,
        log_lines: int = 2000,
        log_retention: float = 3600.0,
    ) -> None:
        # Start/stop broadcasts are sealed: only a replica may stop an agent's processes.
        self._channel = ReplicaChannel(nc, seal) if nc is not None else None
        self.isolation = isolation
        self.runs = runs
        self._alerts = alerts
        self._nc = nc
        self._owner = owner
        self._status_hook = status_hook
        self._log_lines = log_lines
        self._log_retention = log_retention
        self.pools: dict[str, AgentPool] = {}
        self.logs: dict[str, AgentLogs] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self.history = RunHistory(runs)
        self._starting: dict[str, asyncio.Lock] = {}
        self._pools_changed = asyncio.Condition()
        self._monitor: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._control_handler: Callable[[str, str], Awaitable[None]] | None = None

    async def start(self, control: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        """Watch heartbeats; follow start/stop broadcasts (handled by `control(agent_id, action)`)."""
        self._monitor = asyncio.create_task(self._watch_heartbeats(), name="agent heartbeats")
        self._control_handler = control
        if self._channel is not None and control is not None:
            self._sub = await self._channel.subscribe(
                names.AGENT_PROCESS_CONTROL_SUBJECT, self._on_control, what="agent process control"
            )

    # -- the seed's interface --

    async def spawn(self, config: ProcessAgent) -> dict[str, Any]:
        """Start the agent's pool here (min_idle processes warm up at once); idempotent while running."""
        pool = await self.ensure_running(config)
        return self._summary(pool)

    async def terminate(self, agent_id: str, graceful: bool = True, drain_timeout: float = 30.0) -> None:
        """Stop taking tasks; running ones get `drain_timeout` (0 if not graceful); then SIGTERM, SIGKILL."""
        pool = self.pools.get(agent_id)
        if pool is None or pool.status in ("stopped", "stopping"):
            return
        await pool.stop("stopped by request", drain_timeout=drain_timeout if graceful else 0.0)
        await self.isolation.destroy_sandbox(agent_id)
        self._sandboxes.pop(agent_id, None)
        await self.history.flush()
        await self._status(pool.agent, "stopped", "stopped by request")

    async def heartbeat(self, agent_id: str) -> None:
        """Count a heartbeat for every live process of the agent (one reported by other means)."""
        pool = self.pools.get(agent_id)
        for proc in pool.processes.values() if pool else ():
            proc.last_heartbeat = time.monotonic()

    async def get_health(self, agent_id: str) -> dict[str, Any] | None:
        pool = self.pools.get(agent_id)
        if pool is None:
            return None
        return {
            **self._summary(pool),
            "processes": [_process_health(p) for p in pool.processes.values()],
            "isolation": self._sandboxes[agent_id].enforcement if agent_id in self._sandboxes else None,
        }

    async def list_agents(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        wanted = {k: v for k, v in (filters or {}).items() if v is not None}
        items = [self._summary(pool) for pool in self.pools.values()]
        return [i for i in items if all(i.get(k) == v for k, v in wanted.items())]

    # -- used by the driver and the API --

    def model_base_url(self, agent_id: str, base_url: str) -> str:
        """The LLM gateway's URL as the agent's processes reach it (a relay inside its sandbox)."""
        sandbox = self._sandboxes.get(agent_id)
        return sandbox.model_base_url(base_url) if sandbox is not None else base_url

    async def ensure_running(self, agent: ProcessAgent, *, restart: bool = False) -> AgentPool:
        """The agent's running pool, started if it has none (or restart: a failed/stopped one anew)."""
        lock = self._starting.setdefault(agent.id, asyncio.Lock())
        async with lock:
            pool = self.pools.get(agent.id)
            if pool is not None and pool.status == "running":
                return pool
            if pool is not None and not restart:
                raise AgentUnavailable(pool.status, pool.reason or f"agent is {pool.status}")
            nats_url = agent.nats["url"] if agent.nats else None
            sandbox = await self.isolation.create_sandbox(
                agent.id, agent.isolation, tenant_id=agent.tenant_id, nats_url=nats_url
            )
            self._sandboxes[agent.id] = sandbox
            logs = self.logs.setdefault(agent.id, AgentLogs(self._log_lines, self._log_retention))
            pool = AgentPool(
                agent,
                lambda name: self._spawn_process(agent, sandbox, logs, name),
                lambda proc, failed: self._process_ended(agent, sandbox, proc, failed),
                lambda reason, failures: self._crash_loop(agent, reason, failures),
                lambda errors, window: self._alerts.raise_alert(
                    agent.id, agent.tenant_id, "error_rate", f"{errors} errors within {window:g} s", errors=errors
                ),
            )
            self.pools[agent.id] = pool
            # Recorded before the pool starts: a crash loop's `failed` must come after `running`.
            await self._status(agent, "running", "started")
            pool.start()
            async with self._pools_changed:
                self._pools_changed.notify_all()
            return pool

    async def replacement(self, agent_id: str, old: AgentPool, seconds: float) -> AgentPool | None:
        """A running pool of the agent other than `old`, if one starts within `seconds` (a restart)."""

        def fresh() -> AgentPool | None:
            pool = self.pools.get(agent_id)
            return pool if pool is not None and pool is not old and pool.status == "running" else None

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._pools_changed:
                await self._pools_changed.wait_for(lambda: fresh() is not None)
        return fresh()

    async def broadcast(self, agent_id: str, action: str) -> None:
        """Ask every other replica to apply `action` (start, stop, restart) to the agent too."""
        if self._channel is None:
            return
        body = orjson.dumps({"agent_id": agent_id, "action": action, "origin": self._owner})
        with contextlib.suppress(Exception):
            await self._channel.publish(names.AGENT_PROCESS_CONTROL_SUBJECT, body)

    # -- internals --

    async def _spawn_process(self, agent: ProcessAgent, sandbox: Sandbox, logs: AgentLogs, name: str) -> AgentProcess:
        launch = sandbox.launch(agent, name, agent.runtime.heartbeat_interval)
        proc = AgentProcess(agent.id, name, launch, logs, self._publish_heartbeat)
        await proc.start()
        assert proc.pid is not None
        sandbox.started(name, proc.pid)
        self.history.started(agent.id, agent.tenant_id, name, proc.pid, proc.started_at)
        return proc

    def _publish_heartbeat(self, beat: dict[str, Any]) -> None:
        """Heartbeats also go to agent.<agent_id>.heartbeat (core NATS, the agent's namespace), for
        whoever monitors agents fabric-wide; agent_id is the fabric's, not what the process claims."""
        if self._nc is None or not self._nc.is_connected:
            return
        subject = names.agent_heartbeat_subject(str(beat["agent_id"]))
        task = asyncio.ensure_future(self._nc.publish(subject, orjson.dumps(beat)))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _process_ended(self, agent: ProcessAgent, sandbox: Sandbox, proc: AgentProcess, failed: bool) -> None:
        reason = proc.end_reason or (f"exited with code {proc.exit_code}" if failed else "stopped")
        log.log(
            logging.WARNING if failed else logging.INFO,
            "agent process ended",
            extra={"agent_id": agent.id, "agent_process": proc.name, "exit_code": proc.exit_code, "reason": reason},
        )
        sandbox.finished(proc.name)
        self.history.ended(
            proc.name,
            pid=proc.agent_pid,
            ready_at=proc.ready_at,
            exit_code=proc.exit_code,
            outcome="failed" if failed else "stopped",
            reason=reason,
            tasks_done=proc.tasks_done,
        )

    async def _crash_loop(self, agent: ProcessAgent, reason: str, failures: int) -> None:
        log.error("agent failed: crash loop", extra={"agent_id": agent.id, "reason": reason})
        await self._status(agent, "failed", reason, failures=failures)

    async def _status(self, agent: ProcessAgent, status: str, reason: str, **detail: Any) -> None:
        """A status change of the agent here: into the registry, and out as an alert (audited)."""
        await self._alerts.raise_alert(agent.id, agent.tenant_id, status, reason, **detail)
        if self._status_hook is None:
            return
        for delay in (0.1, 0.3, 1.0, 2.0, None):  # a busy database (SQLite locked) must not lose the move
            try:
                await self._status_hook(agent.id, status, reason)
                return
            except Exception as exc:
                if delay is None:
                    log.warning("agent status not recorded", extra={"agent_id": agent.id, "error": str(exc)[:300]})
                    return
                await asyncio.sleep(delay)

    def _summary(self, pool: AgentPool) -> dict[str, Any]:
        return {
            "agent_id": pool.agent.id,
            "tenant_id": pool.agent.tenant_id,
            "status": pool.status,
            "reason": pool.reason,
            "processes": len(pool.processes),
            "busy": pool.busy,
            "restarts": pool.restarts,
            "failures_in_a_row": pool.failures,
            "replica": self._owner,
        }

    async def _watch_heartbeats(self) -> None:
        while True:
            intervals = [p.agent.runtime.heartbeat_interval for p in self.pools.values()] or [1.0]
            await asyncio.sleep(max(0.02, min(1.0, min(intervals) / 4)))
            for pool in list(self.pools.values()):
                pool.check_heartbeats()

    async def _on_control(self, msg: Any) -> None:
        try:
            body = orjson.loads(msg.data)
            if body.get("origin") == self._owner or self._control_handler is None:
                return
            await self._control_handler(str(body["agent_id"]), str(body["action"]))
        except Exception as exc:
            log.warning("agent control message not applied", extra={"error": str(exc)[:300]})

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop every pool the graceful way within `drain_timeout` (the fabric is stopping)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        pools = [p for p in self.pools.values() if p.status not in ("stopped",)]
        await asyncio.gather(
            *(p.stop("fabric shutting down", drain_timeout=drain_timeout) for p in pools), return_exceptions=True
        )
        self._sandboxes.clear()
        await self.isolation.aclose()
        await self.history.flush()


def _process_health(proc: AgentProcess) -> dict[str, Any]:
    loop_now = time.monotonic()
    return {
        "name": proc.name,
        "pid": proc.agent_pid or proc.pid,
        "state": proc.state.value,
        "uptime": round(proc.uptime, 3),
        "job_id": proc.job_id,
        "tasks_done": proc.tasks_done,
        "last_heartbeat": proc.heartbeat,
        "seconds_since_heartbeat": round(loop_now - proc.last_heartbeat, 3) if proc.last_heartbeat else None,
    }

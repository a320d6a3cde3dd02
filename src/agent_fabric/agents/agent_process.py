"""One running process of an agent: its pipes, its heartbeats, its state, its end.

The fabric talks to it in JSON lines (docs/process-agent-protocol.md): it writes to the process's
stdin and reads its stdout. Messages about the current task go to `inbox` for the driver; `ready`
and heartbeats are kept here; anything else the process prints is its log. When the process ends
(for whatever reason) `inbox` gets None, so a driver waiting for the task's next message learns it
at once instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import orjson

from agent_fabric.agents.isolation import Launch
from agent_fabric.agents.process_logs import AgentLogs

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4 * 1024 * 1024  # a single protocol message (a checkpoint, a result)


class ProcState(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class AgentProcess:
    def __init__(
        self,
        agent_id: str,
        name: str,
        launch: Launch,
        logs: AgentLogs,
        on_heartbeat: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.name = name
        self.launch = launch
        self.logs = logs
        self.state = ProcState.STARTING
        self.pid: int | None = None  # what the fabric started (a launcher or bubblewrap): signals go to its group
        self.agent_pid: int | None = None  # the agent's own pid, from its `ready`
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.last_heartbeat: float | None = None
        self.heartbeat: dict[str, Any] | None = None
        self.job_id: str | None = None
        self.tasks_done = 0
        self.idle_since = time.monotonic()
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.exit_code: int | None = None
        self.end_reason: str | None = None  # why the fabric ended it (None: it exited by itself)
        self.expected_exit = False  # asked to stop: its exit is not a failure
        self.resource_limit = False  # the kernel ended it at its memory limit
        self._on_heartbeat = on_heartbeat
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.launch.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self.launch.cwd),
            env=self.launch.env,
            start_new_session=self.launch.new_session,
            limit=MAX_LINE_BYTES,
        )
        self.pid = self._proc.pid
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"agent {self.name} stdout"),
            asyncio.create_task(self._read_stderr(), name=f"agent {self.name} stderr"),
        ]
        self._tasks.append(asyncio.create_task(self._watch_exit(), name=f"agent {self.name} exit"))

    @property
    def alive(self) -> bool:
        return not self._ended.is_set()

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at

    async def wait_ready(self, seconds: float) -> bool:
        """True once the process said `ready`; False if it ended or stayed silent for `seconds`."""
        ready = asyncio.ensure_future(self._ready.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({ready, ended}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        return self._ready.is_set() and self.alive

    async def ended(self) -> None:
        await self._ended.wait()

    async def send(self, message: dict[str, Any]) -> bool:
        """Write one message; False if the process can no longer read."""
        if self._proc is None or self._proc.stdin is None or not self.alive:
            return False
        try:
            self._proc.stdin.write(orjson.dumps(message) + b"\n")
            await self._proc.stdin.drain()
            return True
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            return False

    def signal(self, sig: int, reason: str | None = None) -> None:
        """Signal the process's whole group (it leads its own session)."""
        if reason is not None and self.end_reason is None:
            self.end_reason = reason
        if self.pid is None or not self.alive:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.launch.new_session:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self, reason: str) -> None:
        self.signal(signal.SIGKILL, reason)

    async def stop(self, drain_timeout: float, stop_timeout: float, reason: str) -> None:
        """Graceful: ask it to finish its task and exit, then SIGTERM, then SIGKILL."""
        self.expected_exit = True
        self.end_reason = self.end_reason or reason
        if self.alive:
            self.state = ProcState.DRAINING
        await self.send({"type": "stop"})
        for sig, wait in ((None, drain_timeout), (signal.SIGTERM, stop_timeout), (signal.SIGKILL, 10.0)):
            if sig is not None:
                self.signal(sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._ended.wait()
                return

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stream = self._proc.stdout
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over MAX_LINE_BYTES: the protocol is broken, end the process
                self.kill(f"sent a protocol line over {MAX_LINE_BYTES} bytes")
                return
            if not line:
                return
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.logs.add(self.name, "stdout", line.decode(errors="replace"))
            return
        kind = message["type"]
        if kind == "heartbeat":
            self.last_heartbeat = time.monotonic()
            self.heartbeat = {k: message.get(k) for k in ("agent_id", "status", "timestamp", "uptime")}
            if self._on_heartbeat is not None:
                self._on_heartbeat({**self.heartbeat, "agent_id": self.agent_id, "process": self.name})
        elif kind == "ready":
            pid = message.get("pid")
            self.agent_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
            self.last_heartbeat = time.monotonic()
            self.ready_at = time.time()
            self._ready.set()
        elif kind == "log":
            self.logs.add(self.name, str(message.get("level", "info")), str(message.get("message", "")))
        elif message.get("job_id") is not None and message.get("job_id") == self.job_id:
            self.inbox.put_nowait(message)
        else:
            self.logs.add(self.name, "protocol", f"ignored {kind!r} message (no such task here)")

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        stream = self._proc.stderr
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                continue  # an overlong log line: dropped, the rest of the log goes on
            if not line:
                return
            self.logs.add(self.name, "stderr", line.decode(errors="replace"))

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        proc = self._proc
        # asyncio's wait() also waits for the pipes to close, which a descendant that inherited
        # them (a daemon the agent left behind) may never do: the exit itself is the returncode.
        waited = asyncio.ensure_future(proc.wait())
        while not waited.done() and proc.returncode is None:
            await asyncio.wait({waited}, timeout=0.1)
        code = proc.returncode
        self.exit_code = code if code is not None else waited.result()
        if self.launch.netns and self.exit_code > 128:  # bubblewrap reports a signal as 128 + n
            self.exit_code = 128 - self.exit_code
        # Let the readers take what the pipes still hold (a checkpoint written just before dying).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        if not waited.done():  # what it left behind belongs to the agent and ends with it
            if self.launch.new_session and self.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(waited)
            waited.cancel()
        group = self.launch.group
        if group is not None and group.hit_memory_limit():
            self.resource_limit = True
            self.end_reason = self.end_reason or "killed at its memory limit (out of memory in its control group)"
        self.state = ProcState.STOPPED if self.expected_exit else ProcState.FAILED
        self._ended.set()
        self.inbox.put_nowait(None)

    async def aclose(self) -> None:
        """Kill if still alive and collect the helper tasks (idempotent)."""
        if self.alive:
            self.kill(self.end_reason or "closed")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._ended.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

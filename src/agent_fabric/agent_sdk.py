"""Write a process agent in a few lines: the fabric side of docs/process-agent-protocol.md.

    from agent_fabric.agent_sdk import Task, run

    def handle(task: Task) -> dict:
        done = (task.checkpoint or {}).get("done", 0)
        for step in range(done, task.input["steps"]):
            task.progress({"step": step})
            task.save_checkpoint({"done": step + 1})   # durable once this returns
        return {"steps": task.input["steps"]}

    if __name__ == "__main__":
        run(handle)

The fabric starts the agent's command, sends tasks as JSON lines on stdin and reads JSON lines on
stdout. This module owns that wire: `print()` in an agent goes to stderr (the fabric keeps it as
the agent's log) so it can never corrupt the protocol. Standard library only, so an agent starts
fast and needs nothing but this file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

PROTOCOL_VERSION = 1
DEFAULT_HEARTBEAT_SECONDS = 30.0
REPLY_TIMEOUT_SECONDS = 120.0


class Failure(Exception):
    """Raise to fail the task with a code users can act on (it becomes the result's error.code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    """Raised by the SDK inside a handler once the fabric cancelled the task (or its timeout hit)."""


class PolicyDenied(Failure):
    """An action the fabric's policy engine refused; raised by `Task.require`."""

    def __init__(self, action: str, effect: str, reason: str) -> None:
        super().__init__("policy_denied", f"{action}: {effect} ({reason})")
        self.action = action
        self.effect = effect


class _Wire:
    """The protocol channel: the real stdout for messages, stdin for the fabric's messages."""

    def __init__(self, out: IO[str], inp: IO[str]) -> None:
        self._out = out
        self._inp = inp
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"), default=str)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def request(self, message: dict[str, Any], timeout: float = REPLY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Send a message that the fabric answers with {"type": "reply", "id": ...}; wait for it."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            event, box = threading.Event(), list[dict[str, Any]]()
            self._waiting[request_id] = (event, box)
        self.send({**message, "id": request_id})
        if not event.wait(timeout):
            self._waiting.pop(request_id, None)
            raise Failure("agent_protocol", f"no reply from the fabric to {message['type']} within {timeout:g} s")
        reply: dict[str, Any] = box[0]
        return reply

    def deliver_reply(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.pop(int(message.get("id", -1)), None)
        if waiting is not None:
            waiting[1].append(message)
            waiting[0].set()

    def lines(self) -> Any:
        return iter(self._inp.readline, "")


class Task:
    """One task as the agent sees it, with the calls that report back to the fabric."""

    def __init__(self, wire: _Wire, message: dict[str, Any]) -> None:
        self._wire = wire
        self.job_id: str = message["job_id"]
        self.tenant_id: str = message.get("tenant_id", "default")
        self.attempt: int = int(message.get("attempt", 1))
        body = message.get("task") or {}
        self.type: str = body.get("type", "")
        self.input: dict[str, Any] = body.get("input") or {}
        self.message: str | None = body.get("message")
        self.checkpoint: Any = message.get("checkpoint")
        """What an earlier run of this job saved last (None on a first run)."""
        self.deadline: float | None = message.get("deadline")
        self._cancelled: str | None = None
        model = message.get("model") or {}
        self.model_base_url: str | None = model.get("base_url")
        """The fabric's LLM gateway (OpenAI-compatible), when the fabric has one; None otherwise."""
        self.model_api_key: str | None = model.get("api_key")
        """This task's own gateway key: its model calls are metered to it; revoked when it ends."""
        if self.model_base_url and self.model_api_key:
            # An OpenAI client made during the task picks these up by itself.
            os.environ["OPENAI_BASE_URL"] = self.model_base_url
            os.environ["OPENAI_API_KEY"] = self.model_api_key

    @property
    def cancelled(self) -> bool:
        """True once the fabric asked to stop; every SDK call then raises Cancelled."""
        return self._cancelled is not None

    def _check(self) -> None:
        if self._cancelled is not None:
            raise Cancelled(self._cancelled)

    def progress(self, data: dict[str, Any]) -> None:
        """Stream a progress item to the task's watchers (SSE, Redis) and its event log."""
        self._check()
        self._wire.send({"type": "progress", "job_id": self.job_id, "data": data})

    def save_checkpoint(self, state: Any) -> None:
        """Record where the task is; returns once the fabric stored it durably. A run after a crash
        (of this process or of the fabric) gets it back as `task.checkpoint`."""
        self._check()
        reply = self._wire.request({"type": "checkpoint", "job_id": self.job_id, "state": state})
        if not reply.get("ok"):
            raise Failure("checkpoint_failed", str(reply.get("error", "the fabric could not store the checkpoint")))
        self.checkpoint = state

    def report_usage(
        self, *, tokens: int = 0, compute_seconds: float = 0.0, cost_usd: float = 0.0, model: str | None = None
    ) -> None:
        """Add to what the task consumed (budgets and metrics read it)."""
        usage = {"tokens": tokens, "compute_seconds": compute_seconds, "cost_usd": cost_usd, "model": model}
        self._wire.send({"type": "usage", "job_id": self.job_id, **usage})

    def check(self, action: str, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the fabric's policy engine about an action before taking it: `tool:<name>`,
        `file:<path>`, `url:<url>` or `shell:<command>`. Returns {"effect", "reason", "policy_id"}."""
        self._check()
        reply = self._wire.request(
            {"type": "policy", "job_id": self.job_id, "action": action, "attributes": attributes or {}}
        )
        if not reply.get("ok"):
            raise Failure("policy_error", str(reply.get("error", "the policy check failed")))
        return {key: reply.get(key) for key in ("effect", "reason", "policy_id")}

    def require(self, action: str, attributes: dict[str, Any] | None = None) -> None:
        """Raise PolicyDenied unless the policy engine allows `action` outright."""
        decision = self.check(action, attributes)
        if decision["effect"] != "allow":
            raise PolicyDenied(action, str(decision["effect"]), str(decision.get("reason") or ""))


Handler = Callable[[Task], Any]


class _Agent:
    def __init__(self, handler: Handler, wire: _Wire) -> None:
        self._handler = handler
        self._wire = wire
        self._started = time.monotonic()
        self._tasks: list[tuple[dict[str, Any], Task | None]] = []
        self._current: Task | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self.agent_id = os.environ.get("AGENT_FABRIC_AGENT_ID", "")
        self.interval = float(os.environ.get("AGENT_FABRIC_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS))

    def heartbeat(self) -> None:
        self._wire.send(
            {
                "type": "heartbeat",
                "agent_id": self.agent_id,
                "status": "busy" if self._current is not None else "idle",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "uptime": round(time.monotonic() - self._started, 3),
            }
        )

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval)
            self.heartbeat()

    def _read(self) -> None:
        """Reader thread: replies wake their callers, cancels mark the task, tasks queue up."""
        for line in self._wire.lines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            kind = message.get("type")
            if kind == "reply":
                self._wire.deliver_reply(message)
            elif kind == "cancel":
                current = self._current
                if current is not None and current.job_id == message.get("job_id"):
                    current._cancelled = str(message.get("reason") or "cancelled")
            elif kind in ("task", "stop"):
                with self._cond:
                    self._tasks.append((message, None))
                    self._cond.notify()
        # stdin closed: the fabric is gone (killed, even). Nothing more will come, and nobody
        # would take the current task's result: stop it at its next SDK call, then exit.
        current = self._current
        if current is not None:
            current._cancelled = "the fabric went away"
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _next(self) -> dict[str, Any] | None:
        with self._cond:
            while not self._tasks and not self._stopping:
                self._cond.wait()
            if self._tasks:
                return self._tasks.pop(0)[0]
            return None

    def serve(self) -> None:
        threading.Thread(target=self._read, name="fabric-reader", daemon=True).start()
        self._wire.send({"type": "ready", "protocol": PROTOCOL_VERSION, "agent_id": self.agent_id, "pid": os.getpid()})
        self.heartbeat()
        threading.Thread(target=self._beat, name="fabric-heartbeat", daemon=True).start()
        while (message := self._next()) is not None and message["type"] == "task":
            self._run_one(Task(self._wire, message))

    def _run_one(self, task: Task) -> None:
        self._current = task
        try:
            result = self._handler(task)
        except Cancelled as exc:
            self._wire.send({"type": "failure", "job_id": task.job_id, "code": "cancelled", "message": str(exc)})
        except Failure as exc:
            self._wire.send({"type": "failure", "job_id": task.job_id, "code": exc.code, "message": exc.message})
        except Exception as exc:  # the agent's own bug: report it, stay up for the next task
            message = f"{type(exc).__name__}: {exc}"[:2000]
            self._wire.send({"type": "failure", "job_id": task.job_id, "code": "agent_error", "message": message})
        else:
            self._wire.send({"type": "result", "job_id": task.job_id, "result": result})
        finally:
            self._current = None


def run(handler: Handler) -> None:
    """Serve tasks until the fabric says stop or closes stdin. Call once, from the agent's main."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints and child output go to the log
    sys.stdout = sys.stderr
    _Agent(handler, _Wire(protocol_out, sys.stdin)).serve()

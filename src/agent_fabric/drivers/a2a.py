"""The `a2a` runtime: a task runs on a registered agent that speaks A2A (Agent2Agent) elsewhere.

The agent is a package of runtime `a2a` (agents/manifest.py) registered to the task's tenant: its
`AGENT_A2A_URL` is the JSON-RPC endpoint, and `AGENT_A2A_TOKEN_ENV`, if set, names the fabric's
environment variable holding its bearer token (read at each run, never stored).

A run sends the task as one `message/send` (the task's text, its input as a data part), saves the
A2A task id as the checkpoint at once, then reads the task with `tasks/get` every
A2A_POLL_SECONDS, reporting each state change as progress. A resumed attempt (redelivery after a
crash, a shutdown's hand-back) finds the id in its checkpoint and follows that task: the message is
not sent twice. The completed task's artifacts (and the agent's last words) are the result; failed,
rejected, canceled, input-required and auth-required end it with a typed failure (the fabric has no
one to answer an agent's question mid-task, so it cancels such a task). A cancellation or timeout
sends `tasks/cancel`; a shutdown does not, since the next attempt picks the task up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent_fabric.a2a.client import (
    FINAL_STATES,
    TASK_NOT_FOUND,
    WORKING_STATES,
    A2AClient,
    A2AError,
    agent_text,
    state_of,
    texts,
)
from agent_fabric.agents.registry import AgentRecord, AgentRegistry
from agent_fabric.drivers.agent_zero import check_message_size, task_message
from agent_fabric.drivers.base import RunContext
from agent_fabric.errors import InvalidTask, TaskFailure
from agent_fabric.settings import A2ASettings
from agent_fabric.tasks import TaskSpec

log = logging.getLogger(__name__)

MAX_POLL_ERRORS: Final = 3  # transient errors in a row while following a task before it fails
# Answer at once with the task; the fabric follows it (a blocking send would hold one HTTP request
# for the whole run). acceptedOutputModes is required by A2A 0.2 servers such as fasta2a.
SEND_CONFIGURATION: Final = {"blocking": False, "acceptedOutputModes": ["text/plain", "application/json"]}
NAMESPACE: Final = uuid.UUID("5f0e1c1e-6a2d-4b8e-9a51-a2a0fab71c00")
FAILURES: Final = {
    "failed": "agent_error",
    "rejected": "agent_rejected",
    "canceled": "agent_cancelled",
    "input-required": "agent_input_required",
    "auth-required": "agent_auth_failed",
}


@dataclass(frozen=True)
class _Agent:
    id: str
    url: str
    token: str | None


class A2ADriver:
    runtime = "a2a"

    def __init__(self, registry: AgentRegistry, cfg: A2ASettings, environ: Mapping[str, str] = os.environ) -> None:
        self._registry = registry
        self._cfg = cfg
        self._environ = environ
        self._clients: dict[tuple[str, str | None], A2AClient] = {}

    def check(self, spec: TaskSpec) -> None:
        if not spec.agent_definition.agent_id:
            raise InvalidTask(
                "runtime 'a2a' needs agent_definition.agent_id: the id of a registered A2A agent",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        check_message_size(spec)

    async def start(self) -> None:
        """Clients open on first use, one per agent endpoint and token."""

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def run(self, ctx: RunContext) -> Any:
        agent = self._resolve(await self._registry.get(str(ctx.spec.agent_definition.agent_id)), ctx.spec)
        client = self._client(agent)
        started = time.monotonic()
        saved = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
        task_id = str(saved["a2a_task_id"]) if saved.get("a2a_task_id") else None
        task: dict[str, Any] | None = None  # None: read it (a resumed attempt follows the task it sent)
        try:
            if task_id is None:
                reply = await client.send(_message(ctx.spec), SEND_CONFIGURATION)
                if reply.get("kind") == "message":  # the agent answered at once: no task to follow
                    return _result(agent, reply, [], reply.get("parts"))
                task_id = _task_id(reply)
                await ctx.save_checkpoint({"a2a_task_id": task_id, "context_id": reply.get("contextId")})
                task = reply
            task = await self._follow(ctx, client, task_id, task)
        except asyncio.CancelledError:
            if task_id is not None and ctx.ending():
                await asyncio.shield(self._cancel(client, task_id))
            raise
        finally:
            ctx.add_usage(compute_seconds=time.monotonic() - started)
        state = state_of(task)
        if state == "completed":
            return _result(agent, task, task.get("artifacts") or [], None)
        if state in ("input-required", "auth-required"):
            await self._cancel(client, task_id)
        said = agent_text(task)
        raise TaskFailure(
            FAILURES[state], f"A2A task {task_id} of agent {agent.id} {state}: {said or 'no message'}"[:2000]
        )

    def _resolve(self, record: AgentRecord | None, spec: TaskSpec) -> _Agent:
        agent_id = str(spec.agent_definition.agent_id)
        if record is None or record.tenant_id is None or record.tenant_id != spec.tenant_id:
            raise InvalidTask(
                f"no A2A agent {agent_id!r} is registered in tenant {spec.tenant_id!r}",
                code="unknown_agent",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        if record.runtime != self.runtime:
            raise InvalidTask(
                f"agent {agent_id!r} runs on runtime {record.runtime!r}, not 'a2a'",
                code="runtime_mismatch",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        url = str(record.manifest.get("AGENT_A2A_URL", "")).strip()
        token_env = str(record.manifest.get("AGENT_A2A_TOKEN_ENV", "")).strip()
        token = self._environ.get(token_env) if token_env else None
        if token_env and not token:
            raise TaskFailure(
                "agent_unavailable",
                f"agent {agent_id} needs a token from the fabric's environment variable {token_env}, which is unset",
            )
        return _Agent(agent_id, url, token)

    def _client(self, agent: _Agent) -> A2AClient:
        key = (agent.url, agent.token)
        client = self._clients.get(key)
        if client is None:
            client = A2AClient(
                agent.url, token=agent.token, timeout=self._cfg.request_timeout_seconds, name=f"A2A agent {agent.id}"
            )
            self._clients[key] = client
        return client

    async def _follow(
        self, ctx: RunContext, client: A2AClient, task_id: str, task: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Read the task until it ends or waits for input; each state change is a progress item."""
        reported, errors = "", 0
        while True:
            if task is None:
                try:
                    task = await self._read(client, task_id)
                    errors = 0
                except A2AError as exc:
                    errors += 1
                    if not exc.transient or errors > MAX_POLL_ERRORS:
                        raise
                    log.warning(
                        "A2A task not read; trying again", extra={"job_id": ctx.spec.job_id, "error": exc.message}
                    )
                    await asyncio.sleep(self._cfg.poll_seconds)
                    continue
            state = state_of(task)
            if state != reported:
                await ctx.progress(_progress(task_id, task))
                reported = state
            if state in FINAL_STATES or state in FAILURES:
                return task
            if state not in WORKING_STATES:
                raise TaskFailure("agent_protocol_error", f"A2A task {task_id} is in state {state!r}")
            await asyncio.sleep(self._cfg.poll_seconds)
            task = None

    async def _read(self, client: A2AClient, task_id: str) -> dict[str, Any]:
        try:
            return await client.get_task(task_id)
        except A2AError as exc:
            if exc.rpc_code == TASK_NOT_FOUND:  # e.g. an agent that keeps its tasks in memory restarted
                raise TaskFailure("agent_task_lost", f"the agent no longer knows A2A task {task_id}") from None
            raise

    async def _cancel(self, client: A2AClient, task_id: str) -> None:
        """Best effort: an agent that cannot cancel (or is gone) leaves nothing for the fabric to do."""
        with contextlib.suppress(A2AError):
            await client.cancel_task(task_id)
            log.info("A2A task cancelled", extra={"a2a_task_id": task_id})


def _message(spec: TaskSpec) -> dict[str, Any]:
    """The task as one A2A message: its text, and its input as a data part. The message id derives
    from the tenant and job id, so an agent that deduplicates messages sees a resend as the same one."""
    return {
        "role": "user",
        "kind": "message",
        "messageId": str(uuid.uuid5(NAMESPACE, f"{spec.tenant_id}/{spec.job_id}")),
        "parts": [{"kind": "text", "text": task_message(spec)}, {"kind": "data", "data": spec.task.input}],
        "metadata": {"job_id": spec.job_id, "task_type": spec.task.type},
    }


def _task_id(reply: dict[str, Any]) -> str:
    task_id = reply.get("id")
    if reply.get("kind") not in (None, "task") or not isinstance(task_id, str) or not task_id:
        raise TaskFailure("agent_protocol_error", "the agent answered message/send with neither a task nor a message")
    return task_id


def _progress(task_id: str, task: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"a2a_task_id": task_id, "state": state_of(task)}
    status = task.get("status")
    message = status.get("message") if isinstance(status, dict) else None
    if isinstance(message, dict) and texts(message.get("parts")):
        item["message"] = texts(message.get("parts"))[:2000]
    return item


def _result(agent: _Agent, answer: dict[str, Any], artifacts: list[Any], parts: Any) -> dict[str, Any]:
    """The agent's output: text and data parts of its artifacts (or of its direct reply), and the
    artifacts as sent. `text` falls back to the agent's last message."""
    every = [p for a in artifacts if isinstance(a, dict) for p in a.get("parts") or ()] if parts is None else parts
    text = texts(every) or (agent_text(answer) if parts is None else "")
    return {
        "agent_id": agent.id,
        "a2a_task_id": answer.get("id") if answer.get("kind") != "message" else answer.get("taskId"),
        "context_id": answer.get("contextId"),
        "text": text,
        "data": [p.get("data") for p in every or () if isinstance(p, dict) and p.get("kind") == "data"],
        "artifacts": artifacts,
    }

"""The `process` runtime: a task runs in one of its registered agent's processes.

The task goes to an idle process of the agent's pool (agents/pool.py) as a JSON line, and the
process's messages come back through the same RunContext as every other driver: progress,
checkpoints (stored before the agent is told they are, so it may act on them), usage, policy
questions, then a result or a typed failure (docs/process-agent-protocol.md).

If the process dies mid-task (crash, kill -9, missed heartbeats) the attempt moves to another
process with the newest checkpoint, up to `max_task_handoffs` times; a process the kernel ended at
its memory limit fails the task with `resource_limit` instead (running it again would end the
same way). A cancellation or timeout is sent to the process; one that does not report back within
`cancel_grace` is killed (its pool replaces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

from agent_fabric.admission.policy import PolicyEngine
from agent_fabric.admission.policy_model import Action, PolicyContext
from agent_fabric.agents.agent_process import AgentProcess
from agent_fabric.agents.lifecycle import AgentDirectory, LifecycleManager
from agent_fabric.agents.pool import AgentPool, AgentUnavailable
from agent_fabric.agents.process_spec import ProcessAgent
from agent_fabric.drivers.base import RunContext
from agent_fabric.errors import FabricError, InvalidTask, TaskFailure
from agent_fabric.tasks import TaskSpec

log = logging.getLogger(__name__)

RESTART_GAP_SECONDS = 2.0  # between a restart's stop and its start, a waiting task waits this long


@dataclass
class _Outcome:
    kind: str  # result | failure | died
    value: Any = None
    code: str = ""
    message: str = ""


class ProcessDriver:
    runtime = "process"

    def __init__(
        self,
        lifecycle: LifecycleManager,
        directory: AgentDirectory,
        policies: PolicyEngine,
        *,
        model_gateway: bool = False,
    ) -> None:
        self.lifecycle = lifecycle
        self._directory = directory
        self._policies = policies
        # With upstreams configured, each task carries its own LLM gateway key (issue 16): the
        # agent's model calls are metered to the task and bound by its budgets.
        self._model_gateway = model_gateway

    def check(self, spec: TaskSpec) -> None:
        if not spec.agent_definition.agent_id:
            raise InvalidTask(
                "runtime 'process' needs agent_definition.agent_id: the id of a registered agent",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )

    async def start(self) -> None:
        """The lifecycle manager is started by the fabric (it outlives the consumer)."""

    async def aclose(self) -> None:
        """The lifecycle manager stops the processes, after the consumer has stopped."""

    async def run(self, ctx: RunContext) -> Any:
        spec = ctx.spec
        agent = await self._agent(spec)
        if agent.status == "stopped":
            raise TaskFailure(
                "agent_unavailable", f"agent {agent.id} is stopped (POST /api/v1/agents/{agent.id}/start)"
            )
        try:
            pool = await self.lifecycle.ensure_running(agent)
        except AgentUnavailable as exc:
            raise TaskFailure("agent_unavailable", f"agent {agent.id} is {exc.status}: {exc.reason}") from None
        except FabricError as exc:
            raise TaskFailure(exc.code, exc.message) from None
        state = ctx.checkpoint
        handoffs = 0
        while True:
            try:
                proc = await pool.acquire()
            except AgentUnavailable as exc:
                fresh = await self._successor(agent, pool) if exc.status == "stopping" else None
                if fresh is not None:
                    pool = fresh  # restarted while this task waited: it waits for the new processes
                    continue
                raise TaskFailure("agent_unavailable", f"agent {agent.id} is {exc.status}: {exc.reason}") from None
            outcome, state = await self._exchange(ctx, agent, pool, proc, state)
            if outcome.kind == "result":
                return outcome.value
            if outcome.kind == "failure":
                if outcome.code != "cancelled":
                    await pool.error()
                raise TaskFailure(outcome.code, outcome.message)
            if proc.resource_limit:
                raise TaskFailure("resource_limit", f"agent process {proc.name} {proc.end_reason}")
            handoffs += 1
            reason = proc.end_reason or f"exited with code {proc.exit_code}"
            if handoffs > agent.runtime.max_task_handoffs:
                raise TaskFailure("agent_crashed", f"the agent's process died {handoffs} times; last: {reason}")
            log.warning("agent process died mid-task: handing the task to another", extra={"job_id": spec.job_id})
            await ctx.progress({"handed_back": True, "process": proc.name, "reason": reason})

    async def _successor(self, agent: ProcessAgent, pool: AgentPool) -> AgentPool | None:
        """The pool that replaces `pool` if this stop is part of a restart, once it is running."""
        runtime = agent.runtime
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(runtime.drain_timeout + runtime.stop_timeout + 10.0):
                await pool.ended.wait()
        return await self.lifecycle.replacement(agent.id, pool, RESTART_GAP_SECONDS)

    async def _agent(self, spec: TaskSpec) -> ProcessAgent:
        agent_id = str(spec.agent_definition.agent_id)
        try:
            agent = await self._directory.process_agent(agent_id)
        except FabricError as exc:  # the agent exists but cannot run here as configured
            raise TaskFailure(exc.code, exc.message) from None
        if agent is None or agent.tenant_id != spec.tenant_id:  # another tenant's agent is not there
            raise InvalidTask(
                f"no process agent {agent_id!r} is registered in tenant {spec.tenant_id!r}",
                code="agent_not_found",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        return agent

    async def _exchange(
        self, ctx: RunContext, agent: ProcessAgent, pool: AgentPool, proc: AgentProcess, state: Any
    ) -> tuple[_Outcome, Any]:
        """Run the task on `proc` until it reports an outcome or dies; (outcome, newest checkpoint)."""
        spec = ctx.spec
        while not proc.inbox.empty():  # leftovers of a task cancelled on this process earlier
            proc.inbox.get_nowait()
        proc.job_id = spec.job_id
        reported = False
        try:
            assignment: dict[str, Any] = {
                "type": "task",
                "job_id": spec.job_id,
                "tenant_id": spec.tenant_id,
                "attempt": ctx.attempt,
                "task": spec.task.model_dump(mode="json"),
                "checkpoint": state,
                "timeout_seconds": spec.timeout_seconds,
            }
            if self._model_gateway:
                endpoint = await ctx.model_endpoint()
                base_url = self.lifecycle.model_base_url(agent.id, endpoint["OPENAI_BASE_URL"])
                assignment["model"] = {"base_url": base_url, "api_key": endpoint["OPENAI_API_KEY"]}
            await proc.send(assignment)
            while True:
                message = await proc.inbox.get()
                if message is None:
                    return _Outcome("died"), state
                kind = message["type"]
                if kind == "result":
                    reported = True
                    return _Outcome("result", message.get("result")), state
                if kind == "failure":
                    reported = True
                    code = str(message.get("code") or "agent_failure")[:64]
                    return _Outcome("failure", code=code, message=str(message.get("message") or "")[:2000]), state
                state = await self._handle(ctx, agent, proc, message, state)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop_task(agent, proc))
            raise
        finally:
            await pool.release(proc, completed=reported)

    async def _handle(
        self, ctx: RunContext, agent: ProcessAgent, proc: AgentProcess, message: dict[str, Any], state: Any
    ) -> Any:
        kind = message["type"]
        if kind == "progress":
            data = message.get("data")
            await ctx.progress(data if isinstance(data, dict) else {"value": data})
        elif kind == "checkpoint":
            try:
                await ctx.save_checkpoint(message.get("state"))
            except Exception as exc:
                await _reply(proc, message, ok=False, error=f"checkpoint not stored: {exc}"[:500])
                return state
            state = message.get("state")
            await _reply(proc, message, ok=True)
        elif kind == "usage":
            tokens, seconds, cost = (_amount(message.get(k)) for k in ("tokens", "compute_seconds", "cost_usd"))
            model = message.get("model")
            ctx.add_usage(
                tokens=int(tokens), compute_seconds=seconds, cost_usd=cost, model=str(model) if model else None
            )
        elif kind == "policy":
            await self._policy(ctx, agent, proc, message)
        else:
            proc.logs.add(proc.name, "protocol", f"unknown message type {kind!r} ignored")
        return state

    async def _policy(self, ctx: RunContext, agent: ProcessAgent, proc: AgentProcess, message: dict[str, Any]) -> None:
        attributes = message.get("attributes") if isinstance(message.get("attributes"), dict) else {}
        try:
            action = Action.parse(str(message.get("action", "")), attributes)
        except ValueError as exc:
            await _reply(proc, message, ok=False, error=str(exc))
            return
        spec = ctx.spec
        context = PolicyContext(
            tenant_id=spec.tenant_id,
            workspace_id=spec.metadata.get("workspace_id"),
            agent_id=agent.id,
            user=spec.metadata.get("user") or f"agent:{agent.id}",
            role="agent",
            attributes={"runtime": "process", "priority": spec.priority.value},
        )
        decision = self._policies.decide(action, context, actor=f"agent:{agent.id}", door="process")
        await _reply(
            proc, message, ok=True, effect=decision.effect.value, reason=decision.reason, policy_id=decision.policy_id
        )

    async def _stop_task(self, agent: ProcessAgent, proc: AgentProcess) -> None:
        """Cancelled or timed out: tell the process; kill it if it does not report back in time."""
        await proc.send({"type": "cancel", "job_id": proc.job_id, "reason": "the fabric stopped this task"})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(agent.runtime.cancel_grace):
                while True:
                    message = await proc.inbox.get()
                    if message is None or message["type"] in ("result", "failure"):
                        return
                    if "id" in message:  # it still asks (a checkpoint): the task is over, say so
                        await _reply(proc, message, ok=False, error="the task was cancelled")
        proc.expected_exit = True  # replaced by its pool, not counted as a crash of the agent
        proc.kill(f"did not stop its cancelled task within {agent.runtime.cancel_grace:g} s")


async def _reply(proc: AgentProcess, message: dict[str, Any], **body: Any) -> None:
    if "id" in message:
        await proc.send({"type": "reply", "id": message["id"], **body})


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)

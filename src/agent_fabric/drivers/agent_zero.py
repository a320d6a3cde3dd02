"""The `agent-zero` runtime: a task becomes a message to an Agent Zero instance.

Agent Zero's `api_message` blocks until the agent has finished, and a new chat's context id is
only known when it returns. So a run first opens the chat with a short priming message, saves
the context id as the task's checkpoint, and only then sends the task. A redelivered task
(its process died) reads that checkpoint and follows the same chat: if the task's message is in
the chat's log it waits for the answer there instead of sending the task again. Progress is the
chat's log, polled (Agent Zero has no push channel for API-key clients). Cancelling or timing out
resets the chat, which stops Agent Zero's run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from agent_fabric.agent_zero.client import AgentZeroError, Reply
from agent_fabric.agent_zero.fleet import Fleet, Instance
from agent_fabric.agent_zero.log_follower import LogFollower, find_user_item
from agent_fabric.drivers.base import RunContext
from agent_fabric.errors import InvalidTask
from agent_fabric.settings import AgentZeroSettings
from agent_fabric.tasks import TaskSpec

PRIMING_MESSAGE = (
    "You are being connected to agent-fabric. Reply with the single word READY and do nothing else; "
    "the task follows in the next message."
)
MAX_PROMPT_CHARS = 100_000


TRANSPORTS = ("http", "mcp", "a2a")


def transport_of(spec: TaskSpec) -> str:
    """`agent_definition.transport`: Agent Zero's HTTP API (default), its MCP server, or A2A."""
    return str((spec.agent_definition.model_extra or {}).get("transport", "http"))


def task_message(spec: TaskSpec) -> str:
    """`task.message` if given, else a prompt built from the task type and its input."""
    if spec.task.message:
        return spec.task.message
    body = orjson.dumps(spec.task.input, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return f"Task type: {spec.task.type}\nInput (JSON):\n{body}\nCarry out this task and report the result."


class AgentZeroDriver:
    runtime = "agent-zero"

    def __init__(self, cfg: AgentZeroSettings, fleet: Fleet) -> None:
        self._cfg = cfg
        self.fleet = fleet  # owned by the fabric (started and closed there): the admin API shares it

    async def start(self) -> None:
        """Nothing of its own to start: the fleet is the fabric's."""

    def check(self, spec: TaskSpec) -> None:
        if not self.fleet.serves(spec.tenant_id):
            raise InvalidTask(
                "no Agent Zero instance serves this tenant (set AGENT_FABRIC_AGENT_ZERO_URL or register one "
                "with POST /api/v2/agent/instances)",
                code="runtime_unavailable",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        if transport_of(spec) not in TRANSPORTS:
            raise InvalidTask(
                f"agent_definition.transport must be one of {', '.join(TRANSPORTS)}",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        if len(task_message(spec)) > MAX_PROMPT_CHARS:
            raise InvalidTask(
                f"the task's message is over {MAX_PROMPT_CHARS} characters",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )

    async def run(self, ctx: RunContext) -> Any:
        state = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
        instance = self._instance_for(state, ctx.spec.tenant_id)
        async with instance.slots:
            instance.in_flight += 1
            try:
                return await self._run_on(instance, ctx, dict(state))
            except AgentZeroError as exc:
                self.fleet.mark_failed(instance, exc)
                raise
            finally:
                instance.in_flight -= 1

    async def _run_on(self, instance: Instance, ctx: RunContext, state: dict[str, Any]) -> Any:
        client, started = instance.client, time.monotonic()
        transport = transport_of(ctx.spec)
        if transport == "a2a":
            # A2A gives every task a fresh temporary context: no chat to checkpoint or follow,
            # so a redelivered A2A task runs again, and cancelling cannot stop Agent Zero's run.
            answer = await instance.a2a.run(task_message(ctx.spec))
            ctx.add_usage(compute_seconds=time.monotonic() - started)
            return {"response": answer, "context_id": None, "instance": instance.url, "transport": transport}
        profile = ctx.spec.agent_definition.profile or self._cfg.profile_routes.get(ctx.spec.task.type)
        if "context_id" not in state:
            primed = await client.message(PRIMING_MESSAGE, agent_profile=profile)
            state = {"instance": instance.url, "context_id": primed.context_id}
            await ctx.save_checkpoint(state)
        context_id = str(state["context_id"])
        message = task_message(ctx.spec)
        follower = LogFollower(client, context_id, ctx, message, self._cfg.poll_seconds)
        try:
            log = await client.log(context_id)
            sent_at = find_user_item(log, message)
            if sent_at is None:
                answer = await follower.alongside(self._send(instance, transport, message, context_id))
            else:  # redelivered after the task was sent: its answer comes in the same chat
                answer = await follower.until_answer(sent_at)
        except asyncio.CancelledError:
            with contextlib.suppress(AgentZeroError):
                await asyncio.shield(client.reset_chat(context_id))
            raise
        ctx.add_usage(compute_seconds=time.monotonic() - started)
        return {"response": answer, "context_id": context_id, "instance": instance.url, "transport": transport}

    async def _send(self, instance: Instance, transport: str, message: str, context_id: str) -> Reply:
        if transport == "mcp":
            sent = await instance.mcp.send_message(message, chat_id=context_id)
            return Reply(context_id=str(sent.get("chat_id") or context_id), response=str(sent.get("response", "")))
        return await instance.client.message(message, context_id=context_id)

    def _instance_for(self, state: dict[str, Any], tenant_id: str) -> Instance:
        if "instance" not in state:
            return self.fleet.pick(tenant_id)
        # A chat lives on one instance: a resumed task must go back to it, healthy or not yet.
        instance = self.fleet.by_url(str(state["instance"]))
        if instance is None:
            raise AgentZeroError(
                "agent_context_lost", f"the task's chat lives on {state['instance']}, which is no longer configured"
            )
        return instance

    async def aclose(self) -> None:
        """The fleet is closed by the fabric."""

"""The `agent-zero` runtime: a task becomes a message to an Agent Zero instance.

Agent Zero's `api_message` blocks until the agent has finished, and a new chat's context id is
only known when it returns. So a run first opens the chat with a short priming message, saves
the context id as the task's checkpoint, and only then sends the task. A redelivered task
(its process died) reads that checkpoint and follows the same chat: if the task's message is in
the chat's log it waits for the answer there instead of sending the task again. Progress is the
chat's log, polled (Agent Zero has no push channel for API-key clients). Cancelling or timing out
resets the chat, which stops Agent Zero's run.

When the task's POD has a started fleet, the task may instead run in a fleet agent's chat
(agent_zero/fleet_routing.py decides which, and claims it): no priming then, the chat exists.
The checkpoint also names the agent and where the chat's log stood when the task took it, so a
redelivery continues in that chat and does not mistake an earlier task's identical message
for its own. A chosen chat found gone before anything was sent marks the agent error and the
task is routed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from agent_fabric.agent_zero.client import AgentZeroClient, AgentZeroError, Reply
from agent_fabric.agent_zero.fleet import Fleet, Instance
from agent_fabric.agent_zero.fleet_routing import FleetRouter
from agent_fabric.agent_zero.fleet_rows import AgentRecord
from agent_fabric.agent_zero.log_follower import LogFollower, find_user_item
from agent_fabric.drivers.base import RunContext
from agent_fabric.errors import InvalidTask
from agent_fabric.settings import AgentZeroSettings
from agent_fabric.tasks import TaskSpec

MAX_PROMPT_CHARS = 100_000

log = logging.getLogger(__name__)


class _ChatGone(Exception):
    """The chosen fleet agent's chat is gone before anything was sent to it."""


TRANSPORTS = ("http", "mcp", "a2a")


def transport_of(spec: TaskSpec) -> str:
    """`agent_definition.transport`: Agent Zero's HTTP API (default), its MCP server, or A2A."""
    return str((spec.agent_definition.model_extra or {}).get("transport", "http"))


def check_message_size(spec: TaskSpec) -> None:
    """Refuse at admission a task whose message an agent would be sent whole and could not take."""
    if len(task_message(spec)) > MAX_PROMPT_CHARS:
        raise InvalidTask(
            f"the task's message is over {MAX_PROMPT_CHARS} characters", job_id=spec.job_id, tenant_id=spec.tenant_id
        )


def task_message(spec: TaskSpec) -> str:
    """`task.message` if given, else a prompt built from the task type and its input."""
    if spec.task.message:
        return spec.task.message
    body = orjson.dumps(spec.task.input, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return f"Task type: {spec.task.type}\nInput (JSON):\n{body}\nCarry out this task and report the result."


class AgentZeroDriver:
    runtime = "agent-zero"

    def __init__(self, cfg: AgentZeroSettings, fleet: Fleet, router: FleetRouter | None = None) -> None:
        self._cfg = cfg
        self.fleet = fleet  # owned by the fabric (started and closed there): the admin API shares it
        self._router = router  # None: no fleet routing (every task gets a fresh chat)

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
        check_message_size(spec)

    async def run(self, ctx: RunContext) -> Any:
        state = dict(ctx.checkpoint) if isinstance(ctx.checkpoint, dict) else {}
        # A2A opens a temporary context per task: it cannot run in a fleet agent's chat. A task
        # resumed in a chat of its own (no agent_id) stays there.
        own_chat = "context_id" in state and "agent_id" not in state
        if self._router is None or transport_of(ctx.spec) == "a2a" or own_chat:
            return await self._run_in(ctx, state, None)
        exclude: set[str] = set()
        while True:
            resume = str(state["agent_id"]) if "agent_id" in state else None
            agent = await self._router.acquire(ctx, self._profile(ctx.spec), resume, exclude)
            if agent is None:
                return await self._run_in(ctx, state, None)
            try:
                async with self._router.holding(agent, ctx.spec.job_id):
                    return await self._run_in(ctx, state, agent)
            except _ChatGone as gone:  # nothing was sent to it: try another agent, or a fresh chat
                await self._router.lost(agent, str(gone))
                exclude.add(agent.id)

    async def _run_in(self, ctx: RunContext, state: dict[str, Any], agent: AgentRecord | None) -> Any:
        instance = self._instance_for(state, ctx.spec.tenant_id, agent)
        async with instance.slot():
            try:
                return await self._run_on(instance, ctx, state, agent)
            except AgentZeroError as exc:
                self.fleet.mark_failed(instance, exc)
                if agent is not None and exc.code == "agent_context_not_found" and self._router is not None:
                    await self._router.lost(agent, f"Agent Zero no longer has chat {agent.context_id}: {exc.message}")
                raise

    def _profile(self, spec: TaskSpec) -> str | None:
        return spec.agent_definition.profile or self._cfg.profile_routes.get(spec.task.type)

    async def _run_on(
        self, instance: Instance, ctx: RunContext, state: dict[str, Any], agent: AgentRecord | None
    ) -> Any:
        client, started = instance.client, time.monotonic()
        transport = transport_of(ctx.spec)
        if transport == "a2a":
            # A2A gives every task a fresh temporary context: no chat to checkpoint or follow,
            # so a redelivered A2A task runs again, and cancelling cannot stop Agent Zero's run.
            answer = await instance.a2a.run(task_message(ctx.spec))
            ctx.add_usage(compute_seconds=time.monotonic() - started)
            return {
                "response": answer,
                "context_id": None,
                "instance": instance.url,
                "agent_id": None,
                "transport": transport,
            }
        if agent is not None:
            chat_log, since = await self._enter_agent_chat(client, ctx, state, agent)
            context_id = str(agent.context_id)
        else:
            if "context_id" not in state:
                opened = await client.open_chat(agent_profile=self._profile(ctx.spec))
                state = {"instance": instance.url, "context_id": opened}
                await ctx.save_checkpoint(state)
            context_id, since = str(state["context_id"]), -1
            chat_log = await client.log(context_id)
        message = task_message(ctx.spec)
        follower = LogFollower(client, context_id, ctx, message, self._cfg.poll_seconds, floor=since)
        try:
            sent_at = find_user_item(chat_log, message, since)
            if sent_at is None:
                answer = await follower.alongside(self._send(instance, transport, message, context_id))
            else:  # redelivered after the task was sent: its answer comes in the same chat
                answer = await follower.until_answer(sent_at)
        except asyncio.CancelledError:
            # Resetting is the only way to stop Agent Zero's run. For a fleet agent it also clears
            # the agent's history; the agent stays (same chat id) and takes the next task.
            if agent is not None:
                log.warning("fleet agent's chat reset to stop a cancelled task", extra={"agent": agent.id})
            with contextlib.suppress(AgentZeroError):
                await asyncio.shield(client.reset_chat(context_id))
            raise
        ctx.add_usage(compute_seconds=time.monotonic() - started)
        return {
            "response": answer,
            "context_id": context_id,
            "instance": instance.url,
            "agent_id": agent.id if agent else None,
            "transport": transport,
        }

    async def _enter_agent_chat(
        self, client: AgentZeroClient, ctx: RunContext, state: dict[str, Any], agent: AgentRecord
    ) -> tuple[dict[str, Any], int]:
        """The agent's chat log, and the item after which this task's own items start. A first
        attempt notes that position in the checkpoint before anything is sent."""
        try:
            chat_log = await client.log(str(agent.context_id))
        except AgentZeroError as exc:
            if exc.code != "agent_context_not_found" or state.get("agent_id") == agent.id:
                raise  # a resumed task may have run there already: it must not silently start over
            raise _ChatGone(f"Agent Zero no longer has chat {agent.context_id} ({exc.message})") from None
        if state.get("agent_id") == agent.id:
            # The same chat, unless it was reset since (new guid, items numbered from 0 again).
            return chat_log, int(state["since"]) if state.get("log_guid") == chat_log.get("guid") else -1
        since = max((int(item.get("no", -1)) for item in chat_log.get("items") or []), default=-1)
        state.clear()
        state.update(
            instance=agent.instance_url,
            context_id=agent.context_id,
            agent_id=agent.id,
            log_guid=chat_log.get("guid"),
            since=since,
        )
        await ctx.save_checkpoint(dict(state))
        return chat_log, since

    async def _send(self, instance: Instance, transport: str, message: str, context_id: str) -> Reply:
        if transport == "mcp":
            sent = await instance.mcp.send_message(message, chat_id=context_id)
            return Reply(context_id=str(sent.get("chat_id") or context_id), response=str(sent.get("response", "")))
        return await instance.client.message(message, context_id=context_id)

    def _instance_for(self, state: dict[str, Any], tenant_id: str, agent: AgentRecord | None) -> Instance:
        url = agent.instance_url if agent is not None else state.get("instance")
        return self.fleet.pick(tenant_id) if url is None else self.fleet.home_of(str(url))

    async def aclose(self) -> None:
        """The fleet is closed by the fabric."""

"""Agent Zero's A2A server, for the agent-zero runtime's `a2a` transport: `message/send`, then
`tasks/get` until the task ends, over the fabric's A2A client (a2a/client.py).

Facts that shape this use (fasta2a 0.5.0 inside Agent Zero v1.7): the endpoint carries the API key
(`/a2a/t-<key>/`), every A2A task runs in a fresh temporary context (no multi-turn memory), tasks
run one at a time per instance, the state goes straight from submitted to completed/failed, and
`tasks/cancel` only marks the task. The answer is the last `agent` message in the task's history.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from agent_fabric.a2a.client import FINAL_STATES, A2AClient, A2AError, agent_text, state_of
from agent_fabric.agent_zero.client import AgentZeroError


class AgentZeroA2AClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 300.0,
        poll_seconds: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._a2a = A2AClient(
            f"{base_url.rstrip('/')}/a2a/t-{api_key}/",
            timeout=timeout,
            name="Agent Zero's A2A server",
            transport=transport,
        )
        self._poll = poll_seconds

    async def aclose(self) -> None:
        await self._a2a.aclose()

    async def agent_card(self) -> dict[str, Any]:
        try:
            return await self._a2a.agent_card()
        except A2AError as exc:
            raise AgentZeroError(exc.code, exc.message) from None

    async def run(self, text: str) -> str:
        """Send one message and wait for its task to finish; the agent's answer text."""
        message = {
            "role": "user",
            "kind": "message",
            "messageId": uuid.uuid4().hex,
            "parts": [{"kind": "text", "text": text}],
        }
        try:
            task = await self._a2a.send(message)
            while state_of(task) not in FINAL_STATES:
                await asyncio.sleep(self._poll)
                task = await self._a2a.get_task(str(task["id"]))
        except A2AError as exc:
            raise AgentZeroError(exc.code, exc.message) from None
        answer = agent_text(task)
        if state_of(task) != "completed":
            raise AgentZeroError("agent_error", f"A2A task {state_of(task)}: {answer or 'no answer'}")
        return answer

"""Agent Zero's A2A server: JSON-RPC `message/send`, then `tasks/get` until the task ends.

Facts that shape this client (fasta2a 0.5.0 inside Agent Zero v1.7): every A2A task runs in a
fresh temporary context (no multi-turn memory), tasks run one at a time per instance, the state
goes straight from submitted to completed/failed, and `tasks/cancel` only marks the task.
The answer is the last `agent` message in the task's history.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import httpx
import orjson

from agent_fabric.agent_zero.client import AgentZeroError

FINAL_STATES = frozenset({"completed", "failed", "canceled", "rejected"})


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
        self._endpoint = f"{base_url.rstrip('/')}/a2a/t-{api_key}/"
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            # Redirects are never followed: a registered URL must not lead the fabric to another host.
            follow_redirects=False,
            transport=transport,
        )
        self._poll = poll_seconds
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def agent_card(self) -> dict[str, Any]:
        response = await self._http.get(f"{self._endpoint}.well-known/agent.json")
        if response.status_code >= 400:
            raise AgentZeroError("agent_error", f"A2A agent card answered {response.status_code}")
        card: dict[str, Any] = response.json()
        return card

    async def run(self, text: str) -> str:
        """Send one message and wait for its task to finish; the agent's answer text."""
        task = await self._rpc(
            "message/send",
            {
                "message": {
                    "role": "user",
                    "kind": "message",
                    "messageId": uuid.uuid4().hex,
                    "parts": [{"kind": "text", "text": text}],
                }
            },
        )
        while task["status"]["state"] not in FINAL_STATES:
            await asyncio.sleep(self._poll)
            task = await self._rpc("tasks/get", {"id": task["id"]})
        answer = _agent_text(task)
        if task["status"]["state"] != "completed":
            raise AgentZeroError("agent_error", f"A2A task {task['status']['state']}: {answer or 'no answer'}")
        return answer

    async def _rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self._http.post(
                self._endpoint, content=orjson.dumps(payload), headers={"Content-Type": "application/json"}
            )
        except httpx.TimeoutException:
            raise AgentZeroError("timeout", "Agent Zero's A2A server did not answer in time") from None
        except httpx.TransportError as exc:
            raise AgentZeroError("agent_unreachable", f"Agent Zero's A2A server: {exc}") from None
        if response.status_code == 401:
            raise AgentZeroError("agent_auth_failed", "A2A refused the token")
        if response.status_code >= 400:
            raise AgentZeroError("agent_error", f"A2A answered {response.status_code}: {response.text.strip()[:300]}")
        body = orjson.loads(response.content)
        if "error" in body:
            raise AgentZeroError("agent_error", f"A2A {method}: {body['error'].get('message', body['error'])}")
        result: dict[str, Any] = body["result"]
        return result


def _agent_text(task: dict[str, Any]) -> str:
    for message in reversed(task.get("history") or []):
        if message.get("role") == "agent":
            return "".join(p.get("text", "") for p in message.get("parts") or [] if p.get("kind") == "text")
    return ""

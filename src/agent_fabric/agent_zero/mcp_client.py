"""Agent Zero as an MCP server: `send_message` / `finish_chat` over streamable HTTP.

Agent Zero serves MCP at `/mcp/t-<token>/http/` in JSON-response mode: every JSON-RPC request is
a POST answered with plain JSON, and the session travels in the `Mcp-Session-Id` header. The
token in the path is the same API key as the HTTP API's. A tool result's first text content is
a JSON object `{status, response|error, chat_id}`.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import orjson

from agent_fabric.agent_zero.client import AgentZeroError

PROTOCOL_VERSION = "2025-06-18"
CLIENT_INFO = {"name": "agent-fabric", "version": "0.1.0"}


class AgentZeroMcpClient:
    def __init__(
        self, base_url: str, api_key: str, *, timeout: float = 300.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._endpoint = f"{base_url.rstrip('/')}/mcp/t-{api_key}/http/"
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            # Redirects are never followed: a registered URL must not lead the fabric to another host.
            follow_redirects=False,
            transport=transport,
        )
        self._session: str | None = None
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send_message(
        self, message: str, *, chat_id: str | None = None, persistent: bool = True
    ) -> dict[str, Any]:
        """Blocks until the agent finishes; `{"response": ..., "chat_id": ...}` on success."""
        args: dict[str, Any] = {"message": message, "persistent_chat": persistent}
        if chat_id:
            args["chat_id"] = chat_id
        return await self._tool("send_message", args)

    async def finish_chat(self, chat_id: str) -> None:
        await self._tool("finish_chat", {"chat_id": chat_id})

    async def _tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            await self._initialize()
        result = await self._rpc("tools/call", {"name": name, "arguments": arguments})
        outcome = _tool_payload(result)
        if outcome.get("status") != "success":
            raise AgentZeroError("agent_error", f"MCP {name}: {outcome.get('error') or outcome}")
        return outcome

    async def _initialize(self) -> None:
        await self._rpc(
            "initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
        )
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def _rpc(self, method: str, params: dict[str, Any]) -> Any:
        body = await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        if "error" in body:
            raise AgentZeroError("agent_error", f"MCP {method}: {body['error'].get('message', body['error'])}")
        return body.get("result")

    async def _post(self, message: dict[str, Any]) -> dict[str, Any]:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self._session:
            headers["Mcp-Session-Id"] = self._session
        try:
            response = await self._http.post(self._endpoint, content=orjson.dumps(message), headers=headers)
        except httpx.TimeoutException:
            raise AgentZeroError("timeout", "Agent Zero's MCP server did not answer in time") from None
        except httpx.TransportError as exc:
            raise AgentZeroError("agent_unreachable", f"Agent Zero's MCP server: {exc}") from None
        if response.status_code == 403:
            raise AgentZeroError("agent_auth_failed", f"MCP refused: {response.text.strip()[:200]}")
        if response.status_code >= 400:
            raise AgentZeroError("agent_error", f"MCP answered {response.status_code}: {response.text.strip()[:300]}")
        self._session = response.headers.get("mcp-session-id", self._session)
        if not response.content:  # notifications are acknowledged with an empty 202
            return {}
        decoded: dict[str, Any] = orjson.loads(response.content)
        return decoded


def _tool_payload(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        structured = result.get("structuredContent")
        if isinstance(structured, dict):
            return structured.get("result", structured) if "status" not in structured else structured
        for part in result.get("content") or []:
            if part.get("type") == "text":
                try:
                    payload = orjson.loads(part["text"])
                except orjson.JSONDecodeError:
                    return {"status": "error", "error": part["text"]}
                return payload if isinstance(payload, dict) else {"status": "error", "error": str(payload)}
    raise AgentZeroError("agent_error", "MCP tool result carried no content")

"""An A2A (Agent2Agent) client: JSON-RPC 2.0 over HTTP, `message/send`, `tasks/get`, `tasks/cancel`.

Used by the `a2a` runtime (drivers/a2a.py) for any A2A agent, and by the agent-zero runtime's
`a2a` transport (agent_zero/a2a_client.py) for Agent Zero's server. Wire facts it relies on
(A2A 0.2/0.3; fasta2a 0.5.0 speaks the same): camelCase members, a `kind` on every object (`task`,
`message`; parts `text`, `data`, `file`), `message/send` answering a Task (or, for an agent that
replies at once, a Message), task states submitted, working, input-required, auth-required,
completed, failed, canceled, rejected (and unknown), JSON-RPC error -32001 for an unknown task and
-32002 for one that cannot be cancelled any more.

Every failure is an A2AError with a code users can act on (agent_unreachable, timeout,
agent_auth_failed, agent_error, agent_protocol_error); `transient` marks the ones worth trying
again (the agent may answer the next poll).
"""

from __future__ import annotations

import itertools
from typing import Any, Final

import httpx
import orjson

from agent_fabric.errors import TaskFailure

FINAL_STATES: Final = frozenset({"completed", "failed", "canceled", "rejected"})
WORKING_STATES: Final = frozenset({"submitted", "working"})
TASK_NOT_FOUND: Final = -32001
TASK_NOT_CANCELABLE: Final = -32002
CARD_PATHS: Final = (".well-known/agent-card.json", ".well-known/agent.json")  # A2A 0.3, then 0.2
MAX_DETAIL: Final = 300


class A2AError(TaskFailure):
    """A failed A2A call: `code` for the task's failure, `rpc_code` when the agent answered a JSON-RPC error."""

    def __init__(self, code: str, message: str, *, transient: bool = False, rpc_code: int | None = None) -> None:
        super().__init__(code, message)
        self.transient = transient
        self.rpc_code = rpc_code


class A2AClient:
    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        name: str = "the A2A agent",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`endpoint`: the agent's JSON-RPC URL; `token`: sent as `Authorization: Bearer`; `name`:
        how errors name the agent."""
        self.endpoint = endpoint
        self._name = name
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            # Redirects are never followed: a registered URL must not lead the fabric to another host.
            follow_redirects=False,
            transport=transport,
        )
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def agent_card(self) -> dict[str, Any]:
        """The agent card next to the endpoint (`agent-card.json`, else the older `agent.json`)."""
        base = self.endpoint if self.endpoint.endswith("/") else f"{self.endpoint}/"
        for path in CARD_PATHS:
            response = await self._call("GET", f"{base}{path}", "agent card")
            if response.status_code == 404:
                continue
            self._refuse_status(response, "agent card")
            return _object(response, "agent card")
        raise A2AError("agent_error", f"{self._name} has no agent card at {base}.well-known/")

    async def send(self, message: dict[str, Any], configuration: dict[str, Any] | None = None) -> dict[str, Any]:
        """`message/send`: the Task the agent made of `message` (or its immediate Message)."""
        params: dict[str, Any] = {"message": message}
        if configuration is not None:
            params["configuration"] = configuration
        return await self.rpc("message/send", params)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return await self.rpc("tasks/get", {"id": task_id})

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        return await self.rpc("tasks/cancel", {"id": task_id})

    async def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        response = await self._call("POST", self.endpoint, method, content=orjson.dumps(payload))
        self._refuse_status(response, method)
        body = _object(response, method)
        error = body.get("error")
        if error is not None:
            rpc_code = error.get("code") if isinstance(error, dict) else None
            detail = error.get("message", error) if isinstance(error, dict) else error
            raise A2AError(
                "agent_error",
                f"{self._name} answered {method} with error {rpc_code}: {detail}"[:1000],
                rpc_code=rpc_code if isinstance(rpc_code, int) else None,
            )
        result = body.get("result")
        if not isinstance(result, dict):
            raise A2AError("agent_protocol_error", f"{self._name} answered {method} without a result object")
        return result

    async def _call(self, verb: str, url: str, what: str, content: bytes | None = None) -> httpx.Response:
        try:
            return await self._http.request(verb, url, content=content)
        except httpx.TimeoutException:
            raise A2AError("timeout", f"{self._name} did not answer {what} in time", transient=True) from None
        except httpx.TransportError as exc:
            raise A2AError("agent_unreachable", f"{self._name} ({what}): {exc}", transient=True) from None

    def _refuse_status(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status in (401, 403):
            raise A2AError("agent_auth_failed", f"{self._name} refused the fabric's credentials ({what}: {status})")
        if status in (502, 503, 504):
            raise A2AError("agent_unreachable", f"{self._name} is unavailable ({what}: {status})", transient=True)
        if status >= 300:
            detail = response.text.strip()[:MAX_DETAIL]
            raise A2AError("agent_error", f"{self._name} answered {what} with {status}: {detail}")


def _object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise A2AError("agent_protocol_error", f"the answer to {what} is not JSON") from None
    if not isinstance(body, dict):
        raise A2AError("agent_protocol_error", f"the answer to {what} is not a JSON object")
    return body


def texts(parts: Any) -> str:
    """The text parts of a message or artifact, joined."""
    return "".join(str(p.get("text", "")) for p in parts or () if isinstance(p, dict) and p.get("kind") == "text")


def agent_text(task: dict[str, Any]) -> str:
    """What the agent last said: its status message, else the last `agent` message of the history."""
    status = task.get("status") or {}
    message = status.get("message") if isinstance(status, dict) else None
    if isinstance(message, dict) and texts(message.get("parts")):
        return texts(message.get("parts"))
    for item in reversed(task.get("history") or []):
        if isinstance(item, dict) and item.get("role") == "agent":
            return texts(item.get("parts"))
    return ""


def state_of(task: dict[str, Any]) -> str:
    status = task.get("status")
    return str(status.get("state", "")) if isinstance(status, dict) else ""

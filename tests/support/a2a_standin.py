"""A stand-in A2A agent for the a2a runtime's tests: JSON-RPC 2.0 over HTTP as A2A specifies it
(camelCase members, `kind` on every object, the task states fasta2a 0.5.0 and A2A 0.2 use), served
on a loopback port by uvicorn in the test's event loop.

What a task does is told by the `mode` of its message's data part:
- `complete` (default): submitted, then working (with a status message), then completed after
  `seconds`, once a `tasks/get` has seen it working, with one artifact: a text part and the input
  echoed as a data part;
- `fail`: working, then failed with the status message "the agent broke";
- `hang`: working until `tasks/cancel`;
- `ask`: input-required ("which region?").
Every request must carry `Authorization: Bearer <token>` (else 401). Every call is recorded.
`unavailable_gets` answers that many `tasks/get` with 503 (a proxy in front of a restarting agent);
`forget()` drops every task (an agent that keeps them in memory restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.support.asgi_server import serving

NOT_FOUND, NOT_CANCELABLE, NO_METHOD, BAD_PARAMS = -32001, -32002, -32601, -32602
FINAL = {"completed", "failed", "canceled", "rejected"}


@dataclass
class A2AStandIn:
    token: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str | None]] = field(default_factory=list)  # (method, task id)
    messages: list[dict[str, Any]] = field(default_factory=list)
    unavailable_gets: int = 0
    _seen_working: dict[str, asyncio.Event] = field(default_factory=dict)
    _runs: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self) -> FastAPI:
        app = FastAPI()
        app.add_route("/", self._rpc, methods=["POST"])
        app.add_route("/.well-known/agent-card.json", self._card, methods=["GET"])
        return app

    def forget(self) -> None:
        self.tasks.clear()

    def called(self, method: str) -> list[str | None]:
        return [task_id for name, task_id in self.calls if name == method]

    async def _card(self, request: Request) -> Response:
        return JSONResponse(
            {
                "name": "Stand-in",
                "version": "1.0.0",
                "protocolVersion": "0.2.5",
                "url": str(request.base_url),
                "capabilities": {"streaming": False, "pushNotifications": False},
                "skills": [{"id": "echo", "name": "echo"}],
            }
        )

    async def _rpc(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return PlainTextResponse("Unauthorized", status_code=401)
        rpc = await request.json()
        method, params, rpc_id = rpc.get("method"), rpc.get("params") or {}, rpc.get("id")
        if rpc.get("jsonrpc") != "2.0":
            return _error(rpc_id, -32600, "not JSON-RPC 2.0")
        if method == "message/send":
            return self._send(rpc_id, params)
        task = self.tasks.get(str(params.get("id")))
        self.calls.append((str(method), str(params.get("id"))))
        if method not in ("tasks/get", "tasks/cancel"):
            return _error(rpc_id, NO_METHOD, f"method {method!r} not found")
        if method == "tasks/get" and self.unavailable_gets > 0:
            self.unavailable_gets -= 1
            return PlainTextResponse("Service Unavailable", status_code=503)
        if task is None:
            return _error(rpc_id, NOT_FOUND, "Task not found")
        if method == "tasks/cancel":
            if task["status"]["state"] in FINAL:
                return _error(rpc_id, NOT_CANCELABLE, "Task cannot be canceled")
            task["status"] = {"state": "canceled"}
        elif task["status"]["state"] == "working":
            self._seen_working[task["id"]].set()
        return JSONResponse({"jsonrpc": "2.0", "id": rpc_id, "result": task})

    def _send(self, rpc_id: Any, params: dict[str, Any]) -> Response:
        message = params.get("message")
        if not isinstance(message, dict) or message.get("kind") != "message" or not message.get("messageId"):
            return _error(rpc_id, BAD_PARAMS, "params.message must be a Message")
        self.messages.append(message)
        data = next((p["data"] for p in message.get("parts", []) if p.get("kind") == "data"), {})
        task_id = uuid.uuid4().hex
        self.calls.append(("message/send", task_id))
        task = {
            "kind": "task",
            "id": task_id,
            "contextId": uuid.uuid4().hex,
            "status": {"state": "submitted"},
            "history": [message],
        }
        self.tasks[task_id] = task
        self._seen_working[task_id] = asyncio.Event()
        run = asyncio.create_task(self._run(task, data))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        return JSONResponse({"jsonrpc": "2.0", "id": rpc_id, "result": task})

    async def _run(self, task: dict[str, Any], data: dict[str, Any]) -> None:
        mode, seconds = data.get("mode", "complete"), float(data.get("seconds", 0.2))
        await asyncio.sleep(0.05)
        task["status"] = {"state": "working", "message": _said("on it")}
        if mode == "ask":
            task["status"] = {"state": "input-required", "message": _said("which region?")}
            return
        if mode == "hang":
            return
        await asyncio.sleep(seconds)
        if mode == "complete":  # every state change is observable: the test asserts the progress
            await self._seen_working[task["id"]].wait()
        if task["status"]["state"] in FINAL:  # cancelled meanwhile
            return
        if mode == "fail":
            task["status"] = {"state": "failed", "message": _said("the agent broke")}
            return
        task["artifacts"] = [
            {
                "artifactId": uuid.uuid4().hex,
                "name": "answer",
                "parts": [{"kind": "text", "text": f"done: {data.get('msg', '')}"}, {"kind": "data", "data": data}],
            }
        ]
        task["history"].append(_said("finished"))
        task["status"] = {"state": "completed"}


def _said(text: str) -> dict[str, Any]:
    parts = [{"kind": "text", "text": text}]
    return {"role": "agent", "kind": "message", "messageId": uuid.uuid4().hex, "parts": parts}


def _error(rpc_id: Any, code: int, message: str) -> Response:
    return JSONResponse({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}})


@contextlib.asynccontextmanager
async def running_a2a_standin(token: str) -> AsyncIterator[tuple[str, A2AStandIn]]:
    """The stand-in on a free loopback port: (its JSON-RPC URL, the stand-in)."""
    standin = A2AStandIn(token)
    async with serving(standin.app()) as url:
        yield f"{url}/", standin
    for run in list(standin._runs):
        run.cancel()

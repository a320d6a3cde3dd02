"""A stand-in Agent Zero (v1.7 API-key endpoints, ../shared/agent-zero-api.md) on real HTTP.

Agent Zero is an external black box; this speaks its documented protocol so the driver can be
tested end to end without an LLM:
- `api_message` blocks until the run ends; a new context starts with the greeting `response`
  item at no=0, then the `user` item, then `agent` items updated in place and a final
  `response` item with `kvps.finished`;
- 401 text/plain `API key required` / `Invalid API key`; 404 JSON `Context not found`;
- `api_reset_chat` kills a running message (its caller gets a 500), clears the log, new guid;
- at most 10 requests are served at once (uvicorn's WSGI thread pool), the rest queue;
- `legacy=True` serves the pre-v0.9.9 bare paths and 404s `/api/<name>` as text/plain.
What the "agent" does is read from the message: `[sleep S]` works S seconds, `[fail]` fails.
`/_standin/stats` (not part of Agent Zero) lets tests see what the instance went through;
`received` lists which chat got which message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.nats_server import free_port, wait_for_port

GREETING = "Hello! I'm Agent Zero, your AI assistant. How can I help you today?"
THREADS = 10


@dataclass
class Context:
    id: str
    profile: str | None
    items: list[dict[str, Any]] = field(default_factory=list)
    guid: str = field(default_factory=lambda: secrets.token_hex(8))
    running: asyncio.Task[str] | None = None
    progress: str = "Waiting for input"

    def add(self, type_: str, heading: str, content: str = "", kvps: dict[str, Any] | None = None) -> dict[str, Any]:
        item = {
            "no": len(self.items),
            "id": None,
            "type": type_,
            "heading": heading,
            "content": content,
            "kvps": kvps,
            "timestamp": time.time(),
            "agentno": 0,
        }
        self.items.append(item)
        self.progress = heading
        return item

    def reset(self) -> None:
        self.items.clear()
        self.guid = secrets.token_hex(8)
        self.add("response", "icon://chat A0: Responding", GREETING, {"finished": True})
        self.progress = "Waiting for input"


@dataclass
class Stats:
    messages: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    resets: int = 0
    bad_keys: int = 0
    messages_in_flight: int = 0
    max_messages_in_flight: int = 0
    terminated_chats: int = 0
    overlapping_messages: int = 0  # a message sent to a chat whose agent was still running


class AgentZeroStandIn:
    def __init__(self, api_key: str, *, legacy: bool = False) -> None:
        self.api_key = api_key
        self.legacy = legacy
        self.contexts: dict[str, Context] = {}
        self.received: list[tuple[str, str]] = []  # (context id, message) of every api_message, in order
        self.stats = Stats()
        self._threads = asyncio.Semaphore(THREADS)
        handlers = {
            "api_message": self._message,
            "api_log_get": self._log_get,
            "api_reset_chat": self._reset,
            "api_terminate_chat": self._terminate,
            "health": self._health,
        }
        self.a2a_tasks: dict[str, dict[str, Any]] = {}
        self._a2a_lock = asyncio.Lock()  # fasta2a's broker runs one task at a time per instance
        self._a2a_runs: set[asyncio.Task[None]] = set()
        self._mcp_sessions: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/api/{name:path}", self._dispatch(handlers, bare=False), methods=["GET", "POST"]),
                Route("/_standin/stats", self._stats, methods=["GET"]),
                Route("/mcp/t-{token}/http/", self._mcp, methods=["POST"]),
                Route("/a2a/t-{token}/", self._a2a, methods=["POST"]),
                Route("/a2a/t-{token}/.well-known/agent.json", self._agent_card, methods=["GET"]),
                Route("/{name:path}", self._dispatch(handlers, bare=True), methods=["GET", "POST"]),
            ]
        )

    def _dispatch(self, handlers: dict[str, Any], *, bare: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]
            served_here = bare == self.legacy
            if name not in handlers or not served_here:
                return PlainTextResponse(f"API endpoint not found: {request.url.path}", status_code=404)
            async with self._threads:
                self.stats.in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
                try:
                    return await self._handle(name, handlers[name], request)
                finally:
                    self.stats.in_flight -= 1

        return endpoint

    async def _handle(self, name: str, handler: Any, request: Request) -> Response:
        if name != "health":
            presented = request.headers.get("x-api-key")
            if presented is None:
                self.stats.bad_keys += 1
                return PlainTextResponse("API key required", status_code=401)
            if presented != self.api_key:
                self.stats.bad_keys += 1
                return PlainTextResponse("Invalid API key", status_code=401)
        body = await request.json() if request.headers.get("content-type", "").startswith("application/json") else {}
        if request.method == "GET":
            body = dict(request.query_params)
        result: Response = await handler(body)
        return result

    async def _health(self, _: dict[str, Any]) -> Response:
        return JSONResponse(
            {
                "gitinfo": {
                    "branch": "main",
                    "commit_hash": "2d95cd9" + "0" * 33,
                    "tag": "v1.7",
                    "short_tag": "v1.7",
                    "version": "M v1.7",
                    "commit_time": "2026-04-03 10:00:00",
                },
                "error": None,
            }
        )

    async def _message(self, body: dict[str, Any]) -> Response:
        text = body.get("message") or ""
        if not text:
            return JSONResponse({"error": "Message is required"}, status_code=400)
        context_id = body.get("context_id") or ""
        if context_id:
            ctx = self.contexts.get(context_id)
            if ctx is None:
                return JSONResponse({"error": "Context not found"}, status_code=404)
            if body.get("agent_profile") and body["agent_profile"] != ctx.profile:
                return JSONResponse({"error": "Cannot override agent profile on existing context"}, status_code=400)
        else:
            ctx = self._new_context(body.get("agent_profile"))
        self.stats.messages += 1
        if ctx.running is not None:
            self.stats.overlapping_messages += 1
        self.received.append((ctx.id, text))
        self.stats.messages_in_flight += 1
        self.stats.max_messages_in_flight = max(self.stats.max_messages_in_flight, self.stats.messages_in_flight)
        ctx.add("user", "User message", text, {"attachments": []})
        ctx.running = asyncio.create_task(self._run_agent(ctx, text))
        try:
            answer = await ctx.running
        except asyncio.CancelledError:
            return JSONResponse({"error": "Task was cancelled"}, status_code=500)
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        finally:
            self.stats.messages_in_flight -= 1
            ctx.running = None
            ctx.progress = "Waiting for input"
        return JSONResponse({"context_id": ctx.id, "response": answer})

    async def _run_agent(self, ctx: Context, text: str) -> str:
        turn = ctx.add("agent", "A0: Calling LLM...", "", {"step": 1})
        match = re.search(r"\[sleep ([0-9.]+)\]", text)
        seconds = float(match.group(1)) if match else 0.05
        deadline = time.monotonic() + seconds
        step = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            step += 1
            turn["heading"] = f"A0: Working (step {step})"  # items change in place, as in Agent Zero
            turn["content"] += "."
            ctx.progress = turn["heading"]
        if "[fail]" in text:
            ctx.add("error", "Error", "LLM provider failed")
            raise RuntimeError("LLM provider failed after retry")
        answer = f"Done: {text}"
        ctx.add("response", "icon://chat A0: Responding", answer, {"finished": True})
        return answer

    async def _log_get(self, body: dict[str, Any]) -> Response:
        context_id = body.get("context_id")
        if not context_id:
            return JSONResponse({"error": "context_id is required"}, status_code=400)
        ctx = self.contexts.get(context_id)
        if ctx is None:
            return JSONResponse({"error": "Context not found"}, status_code=404)
        items = [dict(item) for item in ctx.items]
        return JSONResponse(
            {
                "context_id": ctx.id,
                "log": {
                    "guid": ctx.guid,
                    "total_items": len(items),
                    "returned_items": len(items),
                    "start_position": 0,
                    "progress": ctx.progress,
                    "progress_active": ctx.running is not None,
                    "items": items,
                },
            }
        )

    async def _reset(self, body: dict[str, Any]) -> Response:
        ctx = self.contexts.get(body.get("context_id") or "")
        if ctx is None:
            return JSONResponse({"error": "Chat context not found"}, status_code=404)
        self.stats.resets += 1
        if ctx.running is not None:
            ctx.running.cancel()
        ctx.reset()
        return JSONResponse({"success": True, "message": "Chat reset successfully", "context_id": ctx.id})

    async def _terminate(self, body: dict[str, Any]) -> Response:
        ctx = self.contexts.pop(body.get("context_id") or "", None)
        if ctx is None:
            return JSONResponse({"error": "Chat context not found"}, status_code=404)
        self.stats.terminated_chats += 1
        if ctx.running is not None:
            ctx.running.cancel()
        return JSONResponse({"success": True, "message": "Chat deleted successfully", "context_id": ctx.id})

    # -- MCP: streamable HTTP in JSON-response mode (helpers/mcp_server.py) --
    async def _mcp(self, request: Request) -> Response:
        if request.path_params["token"] != self.api_key:
            return PlainTextResponse("MCP forbidden", status_code=403)
        rpc = await request.json()
        method = rpc.get("method")
        if method == "initialize":
            session = secrets.token_hex(16)
            self._mcp_sessions.add(session)
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": rpc["id"],
                    "result": {
                        "protocolVersion": rpc["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "Agent Zero", "version": "1.7"},
                    },
                },
                headers={"mcp-session-id": session},
            )
        if request.headers.get("mcp-session-id") not in self._mcp_sessions:
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": rpc.get("id"),
                    "error": {"code": -32600, "message": "Bad Request: No valid session ID provided"},
                },
                status_code=400,
            )
        if method == "notifications/initialized":
            return Response(status_code=202)
        if method != "tools/call":
            return JSONResponse({"jsonrpc": "2.0", "id": rpc["id"], "error": {"code": -32601, "message": "not found"}})
        outcome = await self._mcp_tool(rpc["params"]["name"], rpc["params"].get("arguments") or {})
        return JSONResponse(
            {
                "jsonrpc": "2.0",
                "id": rpc["id"],
                "result": {
                    "content": [{"type": "text", "text": json.dumps(outcome)}],
                    "structuredContent": {"result": outcome},
                    "isError": outcome["status"] != "success",
                },
            }
        )

    async def _mcp_tool(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        chat_id = args.get("chat_id") or ""
        if name == "finish_chat":
            if not chat_id:
                return {"status": "error", "error": "Chat ID is required", "chat_id": ""}
            if self.contexts.pop(chat_id, None) is None:
                return {"status": "error", "error": "Chat not found", "chat_id": chat_id}
            return {"status": "success", "response": "Chat finished", "chat_id": chat_id}
        if not args.get("message"):
            return {"status": "error", "error": "Message is required", "chat_id": chat_id}
        if chat_id and chat_id not in self.contexts:
            return {"status": "error", "error": "Chat not found", "chat_id": chat_id}
        ctx = self.contexts.get(chat_id) or self._new_context(None)
        self.stats.messages += 1
        ctx.add("user", "User message", args["message"], {"attachments": []})
        try:
            answer = await self._run_agent(ctx, args["message"])
        except RuntimeError as exc:
            return {"status": "error", "error": f"MCP Chat message failed: {exc}", "chat_id": ctx.id}
        if not (args.get("persistent_chat") or chat_id):
            self.contexts.pop(ctx.id, None)
            return {"status": "success", "response": answer, "chat_id": ""}
        return {"status": "success", "response": answer, "chat_id": ctx.id}

    # -- A2A: fasta2a 0.5.0 JSON-RPC (helpers/fasta2a_server.py) --
    async def _agent_card(self, request: Request) -> Response:
        if request.path_params["token"] != self.api_key:
            return PlainTextResponse("Unauthorized", status_code=401)
        return JSONResponse(
            {
                "name": "Agent Zero",
                "version": "1.0.0",
                "protocolVersion": "0.2.5",
                "skills": [{"id": "general_assistance"}],
                "url": "http://localhost:8000",
                "capabilities": {"streaming": False, "pushNotifications": False},
            }
        )

    async def _a2a(self, request: Request) -> Response:
        if request.path_params["token"] != self.api_key:
            return PlainTextResponse("Unauthorized", status_code=401)
        rpc = await request.json()
        if rpc.get("method") == "message/send":
            message = rpc["params"]["message"]
            task_id = secrets.token_hex(8)
            task = {
                "id": task_id,
                "contextId": secrets.token_hex(8),
                "kind": "task",
                "status": {"state": "submitted", "timestamp": time.time()},
                "history": [message],
            }
            self.a2a_tasks[task_id] = task
            text = "".join(p.get("text", "") for p in message["parts"] if p.get("kind") == "text")
            run = asyncio.create_task(self._a2a_run(task, text))
            self._a2a_runs.add(run)
            run.add_done_callback(self._a2a_runs.discard)
            return JSONResponse({"jsonrpc": "2.0", "id": rpc["id"], "result": task})
        if rpc.get("method") == "tasks/get":
            task = self.a2a_tasks.get(rpc["params"]["id"])
            if task is None:
                return JSONResponse(
                    {"jsonrpc": "2.0", "id": rpc["id"], "error": {"code": -32001, "message": "Task not found"}}
                )
            return JSONResponse({"jsonrpc": "2.0", "id": rpc["id"], "result": task})
        return JSONResponse(
            {"jsonrpc": "2.0", "id": rpc.get("id"), "error": {"code": -32601, "message": "no"}}, status_code=500
        )

    async def _a2a_run(self, task: dict[str, Any], text: str) -> None:
        async with self._a2a_lock:
            ctx = self._new_context(None)  # every A2A task gets a fresh temporary context
            self.stats.messages += 1
            try:
                answer = await self._run_agent(ctx, text)
                state = "completed"
            except RuntimeError as exc:
                answer, state = str(exc), "failed"
            finally:
                self.contexts.pop(ctx.id, None)
            task["history"].append(
                {
                    "role": "agent",
                    "kind": "message",
                    "messageId": secrets.token_hex(8),
                    "parts": [{"kind": "text", "text": answer}],
                }
            )
            task["status"] = {"state": state, "timestamp": time.time()}

    def _new_context(self, profile: str | None) -> Context:
        ctx = Context(
            id="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8)), profile=profile
        )
        ctx.reset()
        self.contexts[ctx.id] = ctx
        return ctx

    async def _stats(self, _: Request) -> Response:
        return JSONResponse(vars(self.stats))


STANDIN_KEY = "standin-key-0123456789"


@contextlib.contextmanager
def running_standin(
    api_key: str = STANDIN_KEY, *, legacy: bool = False, port: int | None = None
) -> Iterator[tuple[str, AgentZeroStandIn]]:
    """Serve a stand-in on a free port in its own thread; yield (base_url, stand-in)."""
    standin = AgentZeroStandIn(api_key, legacy=legacy)
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(standin.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}", standin
    finally:
        server.should_exit = True
        thread.join(timeout=10)

"""A stand-in OpenAI-compatible provider on real HTTP, for the LLM gateway's tests and benchmark.

An LLM provider is an external black box; this speaks the documented OpenAI protocol without a
model:
- `POST /v1/chat/completions`: a `chat.completion` with `usage`; with `stream: true`,
  `text/event-stream` of `data: {chat.completion.chunk}` lines, a first chunk with the role, one
  chunk per token, a chunk with `finish_reason`, then (only when `stream_options.include_usage`)
  a last chunk with empty `choices` and `usage`, then `data: [DONE]`;
- with `tools` in the request the answer is a tool call, streamed as `tool_calls` deltas (id and
  name first, then the arguments in pieces);
- `POST /v1/embeddings`: a `list` of `embedding` objects with `usage`; `GET /v1/models`;
- errors in OpenAI's shape: 401 `invalid_api_key` (quoting the key's ends, as OpenAI does), 404
  `model_not_found`, and on demand 429 / 500.
What the "model" does is read from its name: `error-429` and `error-500` fail so; `nousage-*`
never reports usage; anything else answers `max_tokens` tokens (default 8) of `w<i> `.
Completion tokens are exactly max_tokens; prompt tokens are 10 plus one per word of the messages.
Slow streams: `token_delay` seconds between tokens, and `hold_at(i)`: the stream pauses before
token i until the returned event is set (a test sees tokens arrive while the stream is open).
`requests` lists what the provider received (path, authorization, body).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.nats_server import free_port, wait_for_port

UPSTREAM_KEY = "sk-standin-0123456789abcdefghijklmnopqrstuv"
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


def prompt_tokens(body: dict[str, Any]) -> int:
    words = 0
    for message in body.get("messages") or []:
        words += len(str(message.get("content") or "").split())
    return 10 + words


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


class OpenAIStandIn:
    def __init__(self, api_key: str = UPSTREAM_KEY) -> None:
        self.api_key = api_key
        self.token_delay = 0.0
        self._holds: dict[int, threading.Event] = {}
        self.requests: list[dict[str, Any]] = []
        self.streams_open = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    def hold_at(self, index: int) -> threading.Event:
        """Streams pause before token `index` until the returned event is set."""
        self._holds[index] = threading.Event()
        return self._holds[index]

    def release(self) -> None:
        for gate in self._holds.values():
            gate.set()

    def _refusal(self, request: Request, body: dict[str, Any] | None) -> JSONResponse | None:
        self.requests.append(
            {"path": request.url.path, "authorization": request.headers.get("authorization"), "body": body}
        )
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or key != self.api_key:
            shown = f"{key[:3]}***{key[-4:]}" if key else ""
            return _error(401, f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key")
        model = str((body or {}).get("model", ""))
        if model == "error-429":
            return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        if model == "error-500":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        if body is not None and model not in MODELS and not model.startswith("nousage-"):
            return _error(
                404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found", "model"
            )
        return None

    async def models(self, request: Request) -> Response:
        refusal = self._refusal(request, None)
        if refusal is not None:
            return refusal
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "standin"} for m in MODELS],
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(len(str(i).split()) for i in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": n, "embedding": [0.1, 0.2, 0.3]} for n in range(len(inputs))],
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 8)
        usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": n, "total_tokens": prompt_tokens(body) + n}
        reports_usage = not str(body["model"]).startswith("nousage-")
        if body.get("stream"):
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) and reports_usage
            return StreamingResponse(
                self._stream(body, n, usage if wants_usage else None), media_type="text/event-stream"
            )
        message: dict[str, Any] = {"role": "assistant", "content": "".join(f"w{i} " for i in range(n))}
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [self._tool_call(body)]}
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if body.get("tools") else "length"}
            ],
        }
        if reports_usage:
            answer["usage"] = usage
        return JSONResponse(answer)

    @staticmethod
    def _tool_call(body: dict[str, Any]) -> dict[str, Any]:
        name = body["tools"][0]["function"]["name"]
        return {"id": "call_standin_1", "type": "function", "function": {"name": name, "arguments": '{"city": "Oslo"}'}}

    async def _stream(self, body: dict[str, Any], n: int, usage: dict[str, Any] | None) -> AsyncIterator[bytes]:
        base = {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = body["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        self.streams_open += 1
        try:
            yield chunk({"role": "assistant", "content": ""})
            if body.get("tools"):
                call = self._tool_call(body)
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
                for piece in ('{"city": ', '"Oslo"}'):
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                finish = "tool_calls"
            else:
                for i in range(n):
                    gate = self._holds.get(i)
                    while gate is not None and not gate.is_set():
                        await asyncio.sleep(0.01)
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    yield chunk({"content": f"w{i} "})
                finish = "length"
            yield chunk({}, finish)
            if usage is not None:
                yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            self.streams_open -= 1


@contextlib.contextmanager
def running_openai_standin(api_key: str = UPSTREAM_KEY) -> Iterator[tuple[str, OpenAIStandIn]]:
    """Serve a stand-in on a free port in its own thread; yield (base URL ending in /v1, stand-in)."""
    standin = OpenAIStandIn(api_key)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(standin.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield f"http://127.0.0.1:{port}/v1", standin
    finally:
        standin.release()
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":  # a stand-in process of its own, for scripts/bench/llm_gateway.py
    import argparse

    parser = argparse.ArgumentParser(description="Serve the OpenAI stand-in until killed.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(OpenAIStandIn().app, host="127.0.0.1", port=args.port, log_level="warning")

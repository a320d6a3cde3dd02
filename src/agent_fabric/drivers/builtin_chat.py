"""The builtin `chat` task: exercises the LLM gateway end to end, as an agent would.

It asks the fabric for its model endpoint (RunContext.model_endpoint: OPENAI_BASE_URL and a key
of its own), then makes `input.calls` chat completions there over real HTTP (`input.stream`,
`input.model`, `input.prompt`, `input.max_tokens`, `input.pause_seconds` between calls). Like a
naive agent it carries on after a refused call, so what stops it past a budget is the fabric,
not the task. Each connection is new, so a load balancer in front of replicas spreads the calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from agent_fabric.drivers.base import RunContext
from agent_fabric.errors import InvalidTask
from agent_fabric.tasks import TaskSpec

MAX_CALLS = 1000
_WHOLE = ("calls", "max_tokens")


def check_chat(spec: TaskSpec) -> None:
    inp = spec.task.input
    for key in (*_WHOLE, "pause_seconds"):
        value = inp.get(key, 0)
        whole = key in _WHOLE
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float) or value < 0:
            raise InvalidTask(f"chat needs input.{key} as a number >= 0", job_id=spec.job_id, tenant_id=spec.tenant_id)
    if int(inp.get("calls", 1)) > MAX_CALLS:
        raise InvalidTask(f"chat makes at most {MAX_CALLS} calls", job_id=spec.job_id, tenant_id=spec.tenant_id)
    if not isinstance(inp.get("model", ""), str) or not isinstance(inp.get("prompt", ""), str):
        raise InvalidTask(
            "chat needs input.model and input.prompt as strings", job_id=spec.job_id, tenant_id=spec.tenant_id
        )


async def run_chat(ctx: RunContext) -> dict[str, Any]:
    inp = ctx.spec.task.input
    env = await ctx.model_endpoint()
    body: dict[str, Any] = {
        "model": inp.get("model", "gpt-4o-mini"),
        "messages": [{"role": "user", "content": inp.get("prompt", "Say hello.")}],
        "max_tokens": inp.get("max_tokens", 16),
        "stream": bool(inp.get("stream", False)),
    }
    headers = {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"}
    url = env["OPENAI_BASE_URL"] + "/chat/completions"
    answered, refused, texts = 0, [], []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for n in range(int(inp.get("calls", 1))):
            if n and inp.get("pause_seconds"):
                await asyncio.sleep(float(inp["pause_seconds"]))
            status, text = await _one_call(client, url, headers, body)
            if status == 200:
                answered += 1
                texts.append(text)
            else:
                refused.append({"call": n + 1, "status": status, "error": text})
            await ctx.progress({"llm_call": n + 1, "status": status})
    return {"answered": answered, "refused": refused, "texts": texts}


async def _one_call(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[int, str]:
    """(status, completion text or error code)."""
    if not body["stream"]:
        response = await client.post(url, json=body, headers=headers)
        payload = response.json()
        if response.status_code != 200:
            return response.status_code, str(payload.get("error", {}).get("code"))
        return 200, str(payload["choices"][0]["message"]["content"])
    parts: list[str] = []
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            payload = orjson.loads(await response.aread())
            return response.status_code, str(payload.get("error", {}).get("code"))
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            for choice in orjson.loads(line[5:]).get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    return 200, "".join(parts)

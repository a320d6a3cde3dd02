"""A process agent that asks a model: the fabric's LLM gateway, with the task's own key.

Task type `ask`: input {"prompt": str, "model"?: str, "max_tokens"?: int}; returns {"answer", "model"}.

The fabric hands each task the gateway's base URL and a key minted for that task alone
(task.model_base_url / task.model_api_key, also OPENAI_BASE_URL / OPENAI_API_KEY). The gateway
meters every call to the task and adds its tokens and cost to the task's usage, so the agent
reports no usage of its own. Standard library only (urllib): any OpenAI client would do the same.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from agent_fabric.agent_sdk import Failure, Task, run

DEFAULT_MODEL = "gpt-4o-mini"


def ask(task: Task) -> dict[str, Any]:
    if not task.model_base_url or not task.model_api_key:
        raise Failure("no_model", "this fabric gave the task no model endpoint (no LLM upstreams configured)")
    prompt = str(task.input.get("prompt") or "")
    if not prompt:
        raise Failure("invalid_input", "input.prompt is required")
    body = {
        "model": str(task.input.get("model") or DEFAULT_MODEL),
        "messages": [{"role": "user", "content": prompt}],
    }
    if "max_tokens" in task.input:
        body["max_tokens"] = int(task.input["max_tokens"])
    request = urllib.request.Request(
        task.model_base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {task.model_api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:  # the gateway's refusal (budget, key, upstream): its own words
        detail = exc.read().decode(errors="replace")[:500]
        raise Failure("model_error", f"the gateway answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise Failure("model_unreachable", f"the gateway could not be reached: {exc}") from None
    return {"answer": answer["choices"][0]["message"]["content"], "model": answer.get("model")}


def handle(task: Task) -> Any:
    if task.type == "ask":
        return ask(task)
    raise Failure("unknown_task_type", f"the chat agent has no task type {task.type!r}")


if __name__ == "__main__":
    run(handle)

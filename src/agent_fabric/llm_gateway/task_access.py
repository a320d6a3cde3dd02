"""The drivers' side of the gateway: a task's model endpoint at dispatch, its accounts at the end.

A driver that starts an agent calls `await ctx.model_endpoint()` (drivers/base.RunContext) and puts
the two variables it returns into the agent's environment:
`OPENAI_BASE_URL` (this fabric's /v1) and `OPENAI_API_KEY` (a key minted for this task alone).
OpenAI SDKs and most agent frameworks read exactly these. When the task ends, however it ends,
the runner calls `conclude`: the task's keys are revoked and its calls' tokens and cost join its
usage (as `gateway_tokens` / `gateway_cost_usd` too, which the budget settlement skips because
each call was already settled on its own).
"""

from __future__ import annotations

from typing import Any

from agent_fabric.llm_gateway.keys import GatewayKeys
from agent_fabric.llm_gateway.metering import Meter
from agent_fabric.tasks import TaskSpec


class TaskModelAccess:
    def __init__(self, keys: GatewayKeys, meter: Meter, base_url: str) -> None:
        self._keys = keys
        self._meter = meter
        self.base_url = base_url.rstrip("/")

    async def endpoint_for(self, spec: TaskSpec, timeout_seconds: float) -> dict[str, str]:
        key = await self._keys.mint_for_task(spec, timeout_seconds)
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": key}

    async def conclude(self, spec: TaskSpec, usage: dict[str, Any]) -> None:
        await self._keys.revoke_task(spec.tenant_id, spec.job_id)
        tokens, cost = await self._meter.task_usage(spec.tenant_id, spec.job_id)
        if tokens or cost:
            usage["tokens"] = usage.get("tokens", 0) + tokens
            usage["cost_usd"] = usage.get("cost_usd", 0.0) + cost
            usage["gateway_tokens"] = tokens
            usage["gateway_cost_usd"] = cost

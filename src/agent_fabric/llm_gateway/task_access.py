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

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.admission.budget import BudgetManager
from agent_fabric.admission.budget_config import BudgetConfig
from agent_fabric.errors import TaskFailure
from agent_fabric.llm_gateway.budget_guard import task_entity
from agent_fabric.llm_gateway.keys import GatewayKeys
from agent_fabric.llm_gateway.metering import Meter
from agent_fabric.tasks import TaskSpec

TASK_LIMIT_KEYS = {"llm_max_tokens": "max_tokens", "llm_max_cost_usd": "max_cost_usd"}


def task_limits(spec: TaskSpec) -> BudgetConfig | None:
    """The task's own model-spend limits (metadata.llm_max_tokens / llm_max_cost_usd), if any."""
    asked = {field: spec.metadata[key] for key, field in TASK_LIMIT_KEYS.items() if key in spec.metadata}
    if not asked:
        return None
    try:
        return BudgetConfig.model_validate(asked)
    except ValidationError:
        raise TaskFailure(
            "invalid_llm_limit", "metadata.llm_max_tokens must be a whole number and llm_max_cost_usd a number, >= 0"
        ) from None


class TaskModelAccess:
    def __init__(
        self, keys: GatewayKeys, meter: Meter, base_url: str, budgets: BudgetManager, engine: AsyncEngine
    ) -> None:
        self._keys = keys
        self._meter = meter
        self._budgets = budgets
        self._engine = engine
        self.base_url = base_url.rstrip("/")

    async def endpoint_for(self, spec: TaskSpec, timeout_seconds: float) -> dict[str, str]:
        limits = task_limits(spec)
        if limits is not None:
            async with self._engine.begin() as conn:
                await self._budgets.configure(
                    conn, spec.tenant_id, task_entity(spec.job_id), limits, actor="llm-gateway"
                )
        key = await self._keys.mint_for_task(spec, timeout_seconds, task_budget=limits is not None)
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": key}

    async def conclude(self, spec: TaskSpec, usage: dict[str, Any]) -> None:
        await self._keys.revoke_task(spec.tenant_id, spec.job_id)
        tokens, cost = await self._meter.task_usage(spec.tenant_id, spec.job_id)
        if tokens or cost:
            usage["tokens"] = usage.get("tokens", 0) + tokens
            usage["cost_usd"] = usage.get("cost_usd", 0.0) + cost
            usage["gateway_tokens"] = tokens
            usage["gateway_cost_usd"] = cost

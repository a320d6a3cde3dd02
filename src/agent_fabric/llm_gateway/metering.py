"""Metering: one llm_calls row per call, the token counter, and a task's gateway usage.

The row is written after the call ends (never on the path to the first token), in the same
batched transaction that settles the call's budget entry (budget_guard.py). The task's usage (its
result's `usage`) adds the sum of its calls when the task ends (TaskModelAccess.conclude).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.storage.llm_tables import llm_calls
from agent_fabric.storage.task_store import utcnow
from agent_fabric.telemetry.metrics import FabricMetrics


@dataclass(frozen=True, slots=True)
class CallUsage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    endpoint: str
    model: str
    upstream: str | None
    stream: bool
    usage: CallUsage
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    outcome: str
    status_code: int

    def summary(self) -> dict[str, object]:
        """What the audit entry says about the call."""
        out = asdict(self)
        out["usage"] = {**asdict(self.usage), "total_tokens": self.usage.total_tokens}
        return out


class Meter:
    def __init__(self, engine: AsyncEngine, metrics: FabricMetrics) -> None:
        self._engine = engine
        self._metrics = metrics

    def row(self, grant: KeyGrant, call: CallRecord) -> dict[str, Any]:
        """The call's llm_calls row; counts its tokens in agent_fabric_tokens_total."""
        if call.usage.total_tokens:
            self._metrics.tokens_total.labels(grant.agent_label, call.model).inc(call.usage.total_tokens)
        return dict(
            id=call.id,
            tenant_id=grant.tenant_id,
            job_id=grant.job_id,
            key_kind=grant.kind,
            agent_label=grant.agent_label,
            endpoint=call.endpoint,
            model=call.model,
            upstream=call.upstream,
            stream=call.stream,
            prompt_tokens=call.usage.prompt_tokens,
            completion_tokens=call.usage.completion_tokens,
            total_tokens=call.usage.total_tokens,
            estimated=call.usage.estimated,
            cost_usd=call.cost_usd,
            latency_ms=call.latency_ms,
            ttft_ms=call.ttft_ms,
            outcome=call.outcome,
            status_code=call.status_code,
            created_at=utcnow(),
        )

    async def task_usage(self, tenant_id: str, job_id: str) -> tuple[int, float]:
        """(tokens, cost in USD) of every call the task's keys made."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        func.coalesce(func.sum(llm_calls.c.total_tokens), 0),
                        func.coalesce(func.sum(llm_calls.c.cost_usd), 0.0),
                    ).where(llm_calls.c.tenant_id == tenant_id, llm_calls.c.job_id == job_id)
                )
            ).one()
        return int(row[0]), float(row[1])


async def insert_calls(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(llm_calls), rows)

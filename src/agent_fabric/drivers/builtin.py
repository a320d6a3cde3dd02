"""The builtin runtime: diagnostic tasks that measure and exercise the fabric itself.

- `echo` returns its input unchanged;
- `sleep` waits `input.seconds`, checkpointing each second, so a redelivered task sleeps only
  what is left (the simplest real demonstration of resume-from-checkpoint);
- `fail` fails with `input.code` / `input.message`, to exercise the failure path end to end;
- `spend` reports `input.tokens`, `input.compute_seconds` and `input.cost_usd` as its usage and
  returns them, to exercise budgets end to end (after `input.seconds` of work, if given);
- `chat` makes chat completions through the fabric's LLM gateway with its own task key, to
  exercise metering, budgets per call and token streaming end to end (drivers/builtin_chat.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent_fabric.drivers.base import RunContext
from agent_fabric.drivers.builtin_chat import check_chat, run_chat
from agent_fabric.errors import InvalidTask, TaskFailure
from agent_fabric.tasks import TaskSpec

MAX_SLEEP_SECONDS = 24 * 3600
CHECKPOINT_EVERY_SECONDS = 1.0
SPEND_KEYS = ("tokens", "compute_seconds", "cost_usd")


class BuiltinDriver:
    runtime = "builtin"
    task_types = ("echo", "sleep", "fail", "spend", "chat")

    def check(self, spec: TaskSpec) -> None:
        kind = spec.task.type
        if kind not in self.task_types:
            raise InvalidTask(
                f"builtin runtime has no task type {kind!r}; it runs {', '.join(self.task_types)}",
                code="unknown_task_type",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )
        if kind in ("sleep", "spend") and (kind == "sleep" or "seconds" in spec.task.input):
            seconds = spec.task.input.get("seconds")
            if (
                not isinstance(seconds, int | float)
                or isinstance(seconds, bool)
                or not 0 <= seconds <= MAX_SLEEP_SECONDS
            ):
                raise InvalidTask(
                    f"{kind} needs input.seconds as a number from 0 to {MAX_SLEEP_SECONDS}",
                    job_id=spec.job_id,
                    tenant_id=spec.tenant_id,
                )

        if kind == "chat":
            check_chat(spec)
        if kind == "spend":
            for key in SPEND_KEYS:
                value = spec.task.input.get(key, 0)
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise InvalidTask(
                        f"spend needs input.{key} as a number >= 0", job_id=spec.job_id, tenant_id=spec.tenant_id
                    )

    def settles_at_once(self, spec: TaskSpec) -> bool:
        """Whether this task's run has no effect outside its RunContext and never waits (echo,
        fail, spend without seconds): the runner may run it before claiming it, and write claim
        and outcome together (storage/task_settle.py)."""
        kind = spec.task.type
        return kind in ("echo", "fail") or (kind == "spend" and "seconds" not in spec.task.input)

    async def run(self, ctx: RunContext) -> Any:
        kind = ctx.spec.task.type
        if kind == "echo":
            return ctx.spec.task.input
        if kind == "spend":
            # Optional input.seconds: work that long first (holds the budget reservation meanwhile).
            await asyncio.sleep(float(ctx.spec.task.input.get("seconds", 0)))
            spent = {key: ctx.spec.task.input.get(key, 0) for key in SPEND_KEYS}
            ctx.add_usage(
                tokens=int(spent["tokens"]),
                compute_seconds=float(spent["compute_seconds"]),
                cost_usd=float(spent["cost_usd"]),
                model="builtin",
            )
            return spent
        if kind == "chat":
            return await run_chat(ctx)
        if kind == "sleep":
            return await self._sleep(ctx, float(ctx.spec.task.input["seconds"]))
        raise TaskFailure(
            str(ctx.spec.task.input.get("code", "builtin_failure")),
            str(ctx.spec.task.input.get("message", "the builtin fail task failed, as asked")),
        )

    async def _sleep(self, ctx: RunContext, seconds: float) -> dict[str, Any]:
        slept = float(ctx.checkpoint.get("slept", 0.0)) if isinstance(ctx.checkpoint, dict) else 0.0
        resumed_from = slept
        started = time.monotonic()
        while slept < seconds:
            step = min(CHECKPOINT_EVERY_SECONDS, seconds - slept)
            await asyncio.sleep(step)
            slept += step
            await ctx.save_checkpoint({"slept": slept})
            await ctx.progress({"slept": round(slept, 3), "of": seconds})
        ctx.add_usage(compute_seconds=time.monotonic() - started)
        return {"slept": seconds, "resumed_from": resumed_from}

    async def start(self) -> None:
        """Nothing to open: the builtin runtime holds no connections or processes."""

    async def aclose(self) -> None:
        """Nothing to release: the builtin runtime holds no connections or processes."""

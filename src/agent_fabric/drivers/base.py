"""What every agent driver provides, and what the fabric gives a driver while it runs."""

from __future__ import annotations

from typing import Any, Protocol

from agent_fabric.tasks import TaskSpec


class RunContext(Protocol):
    """The fabric's side of one run: progress, checkpoints and usage for this attempt."""

    spec: TaskSpec
    attempt: int
    checkpoint: Any | None
    """State saved by an earlier attempt of this job (job_id is the thread id), or None."""

    async def progress(self, data: dict[str, Any]) -> None:
        """Stream a progress item to watchers (Redis/NATS, SSE) and the job's event log."""

    async def save_checkpoint(self, state: Any) -> None:
        """Durably record where the run is, so a redelivery resumes here instead of restarting."""

    async def model_endpoint(self) -> dict[str, str]:
        """The LLM gateway for this run's agent: {"OPENAI_BASE_URL", "OPENAI_API_KEY"} to put in its
        environment. The key is minted on the first call (once per attempt), spends for this task
        alone, and is revoked when the task ends or is cancelled (llm_gateway/task_access.py)."""

    def ending(self) -> bool:
        """Whether this attempt is being ended for good (cancelled, failed by the fabric, timed out),
        as opposed to handed back at a shutdown to be resumed elsewhere. A driver that was cancelled
        asks this before it stops work running outside the fabric (a remote agent's task)."""

    def add_usage(
        self, *, tokens: int = 0, compute_seconds: float = 0.0, cost_usd: float = 0.0, model: str | None = None
    ) -> None:
        """Report what the run consumed (budgets and metrics read it)."""


class Driver(Protocol):
    """One runtime (`agent_definition.runtime`). Chosen per task by drivers/factory.py."""

    runtime: str

    def check(self, spec: TaskSpec) -> None:
        """Refuse at admission a task this runtime cannot run (raise InvalidTask)."""

    async def run(self, ctx: RunContext) -> Any:
        """Run the task; return its result (JSON-serialisable) or raise TaskFailure."""

    async def start(self) -> None:
        """Open connections and start background checks (called once, at start-up)."""

    async def aclose(self) -> None:
        """Release connections and processes."""

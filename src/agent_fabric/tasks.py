"""The domain core: what a task is, its priority and its states. No I/O here."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JOB_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
TENANT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
DEFAULT_TENANT = "default"


class Priority(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 is most urgent; used as the sort key of the local run queue."""
        return _RANKS[self]


_RANKS = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.REJECTED, TaskStatus.TIMED_OUT}
)

Runtime = Literal["agent-zero", "process", "a2a", "builtin"]


class AgentDefinition(BaseModel):
    """Which agent runs the task. Drivers read their own extra keys (profile, url, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    runtime: Runtime
    agent_id: str | None = Field(None, max_length=128, description="Registered agent to run on.")
    profile: str | None = Field(None, max_length=128)

    @property
    def label(self) -> str:
        """Bounded-cardinality identity for metrics: the agent id, else runtime/profile."""
        if self.agent_id:
            return self.agent_id
        return f"{self.runtime}/{self.profile}" if self.profile else self.runtime


class TaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(..., min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)
    message: str | None = Field(None, description="Free text for chat agents.")


class TaskSpec(BaseModel):
    """The `data` of an `agent.execute` CloudEvent. Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(..., pattern=JOB_ID_PATTERN)
    tenant_id: str = Field(DEFAULT_TENANT, pattern=TENANT_ID_PATTERN)
    agent_definition: AgentDefinition
    task: TaskBody
    priority: Priority = Priority.NORMAL
    depends_on: list[Annotated[str, Field(pattern=JOB_ID_PATTERN)]] = Field(
        default_factory=list, max_length=64, description="Job ids in the same tenant that must complete first."
    )
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    metadata: dict[str, str] = Field(default_factory=dict)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    tokens: int = 0
    compute_seconds: float = 0.0
    cost_usd: float = 0.0

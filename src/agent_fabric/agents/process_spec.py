"""What the process runtime needs to know about one agent: where it lives, how to start it, how
to keep it (lifecycle and pool), and how to fence it in (isolation). Pure data, no I/O.

The registry supplies the package path, command and tenant; the agent's configuration document
may carry a `process` section (RuntimeConfig) and an `isolation` section (IsolationConfig, seed
001's data model). Everything the agent's own code should see is passed to it as `config`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IsolationLevel = Literal["none", "process", "container"]


class IsolationConfig(BaseModel):
    """Seed 001 `IsolationConfig`: how far an agent's processes are fenced in (README "Isolation")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: IsolationLevel = Field(
        "process",
        description="none: a plain child; process: own session, limits, "
        "working directory, scrubbed environment; container: Kubernetes only.",
    )
    memory_mb: int = Field(512, ge=16, le=1_048_576, description="Memory limit of each process (MiB).")
    cpu_cores: float = Field(1.0, gt=0, le=256, description="CPU share of each process, in cores.")
    max_pids: int = Field(256, ge=8, le=65_536, description="Processes and threads each agent process may have.")
    filesystem_root: str | None = Field(
        None, description="Parent of the per-process working directories (default STATE_DIR/agents)."
    )
    network_egress: list[str] = Field(
        default_factory=list, description="Hosts (or *.domain) the agent may reach. Not enforced yet (README)."
    )


class RuntimeConfig(BaseModel):
    """How the fabric keeps an agent's processes: heartbeats, restarts, pool size, draining."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_interval: float = Field(30.0, ge=0.05, le=3600, description="Seconds between heartbeats (seed 004).")
    missed_heartbeats: int = Field(3, ge=1, le=100, description="Heartbeats missed before a process is failed.")
    ready_timeout: float = Field(30.0, gt=0, le=600, description="Longest wait for a new process's `ready`.")
    min_idle: int = Field(0, ge=0, le=64, description="Warm processes kept ready beyond the busy ones (FR-LIFE-6).")
    max_processes: int = Field(4, ge=1, le=256, description="Processes of this agent at once, per fabric replica.")
    drain_timeout: float = Field(30.0, ge=0, le=3600, description="Graceful stop: how long a running task may finish.")
    stop_timeout: float = Field(5.0, ge=0, le=600, description="After SIGTERM, how long before SIGKILL.")
    cancel_grace: float = Field(5.0, ge=0, le=600, description="A cancelled task's process is killed after this.")
    max_restarts: int = Field(5, ge=1, le=1000, description="Failures in a row before the agent stays `failed`.")
    backoff_base: float = Field(0.5, ge=0, le=600, description="First restart delay; doubles on each failure.")
    backoff_max: float = Field(60.0, ge=0, le=3600, description="Longest restart delay.")
    idle_timeout: float = Field(
        60.0, gt=0, le=86_400, description="A process idle this long beyond min_idle is stopped (the pool shrinks)."
    )
    alert_errors: int = Field(
        5, ge=1, le=10_000, description="Errors (failed processes or tasks) that raise an alert..."
    )
    alert_window: float = Field(60.0, gt=0, le=86_400, description="...when they happen within this many seconds.")
    max_task_handoffs: int = Field(
        3, ge=0, le=100, description="Times one attempt of a task moves to a fresh process after its process died."
    )


def requested_isolation(hints: Mapping[str, Any], default: str) -> str:
    """The isolation level a package asks for (AGENT_ISOLATION in its .env.discovery), else the fabric's."""
    return str(hints.get("AGENT_ISOLATION", default))


def parse_command(command: str | list[str] | None) -> list[str]:
    """AGENT_COMMAND as argv: a JSON-ish list as is, a string split like a shell would (no shell runs)."""
    if command is None:
        return []
    return list(command) if isinstance(command, list) else shlex.split(command)


@dataclass(frozen=True)
class ProcessAgent:
    """One registered agent of runtime `process`, as the lifecycle manager runs it."""

    id: str
    tenant_id: str
    name: str
    package_path: Path
    command: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    isolation: IsolationConfig = field(default_factory=IsolationConfig)
    env: dict[str, str] = field(default_factory=dict)  # the agent's own variables (its configuration)
    status: str = "registered"  # in the registry when looked up
    nats: dict[str, str] | None = None  # its own NATS user on the bundled server: url, user, password, ...


class AgentSettingsDoc(BaseModel):
    """The parts of an agent's configuration document that the process runtime reads."""

    model_config = ConfigDict(extra="ignore")

    process: RuntimeConfig = Field(default_factory=RuntimeConfig)
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)

    @field_validator("process", "isolation", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return {} if value is None else value

"""Notices at registration: what the fabric already knows it cannot do for the agent just
registered, told in the registration's answer, kept in the registry (the agent's status reason)
and logged. A notice never refuses the registration: the agent may still run elsewhere.

Today one notice exists: `container_runtime_unavailable`, for a package that asks for (or a fabric
whose default is) isolation level `container`, which this fabric cannot run (the same check the
start of its processes makes, agents/isolation.py); the Kubernetes manifests are the way to run it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_fabric.agents.isolation import level_unavailable
from agent_fabric.agents.process_spec import requested_isolation
from agent_fabric.agents.registry import AgentRecord
from agent_fabric.settings import ProcessAgentSettings

CONTAINER_RUNTIME_UNAVAILABLE = "container_runtime_unavailable"


@dataclass(frozen=True)
class Notice:
    code: str
    message: str

    def view(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def registration_notices(record: AgentRecord, cfg: ProcessAgentSettings) -> list[Notice]:
    """The notices for an agent just registered; only agents the fabric would start have any."""
    if record.runtime != "process" or record.package_path is None:
        return []  # runs elsewhere: the fabric starts none of its processes
    level = requested_isolation(record.manifest, cfg.isolation)
    problem = level_unavailable(level)
    if problem is None:
        return []
    message = (
        f"{problem}. The agent is registered, but this fabric will not start its processes (start and tasks "
        f"fail with isolation_unavailable); run it on Kubernetes from GET /api/v1/agents/{record.id}/kubernetes"
    )
    return [Notice(CONTAINER_RUNTIME_UNAVAILABLE, message)]

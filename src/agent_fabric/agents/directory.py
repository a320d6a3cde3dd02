"""Which registered agents exist, and in which tenant: an in-memory index for admission.

Admission decides in memory (admission/checks.py), so a task naming `agent_definition.agent_id`
is checked against this index: an id that names no registered agent of the task's tenant is
refused with `unknown_agent` at both doors. The index is loaded at start-up, updated at once in
the process that registers or deletes an agent, and on every other replica by the control
announcement `agent.control.agents` (plus the periodic reload every control topic gets).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.errors import InvalidTask
from agent_fabric.storage.agent_tables import agents
from agent_fabric.tasks import TaskSpec

CONTROL_TOPIC = "agents"


class AgentDirectory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._tenants: dict[str, str] = {}
        self._runtimes: dict[str, str] = {}

    async def reload(self) -> None:
        stmt = select(agents.c.id, agents.c.tenant_id, agents.c.runtime).where(agents.c.tenant_id.is_not(None))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        self._tenants = {r.id: r.tenant_id for r in rows}
        self._runtimes = {r.id: r.runtime for r in rows}

    def add(self, agent_id: str, tenant_id: str, runtime: str) -> None:
        self._tenants[agent_id] = tenant_id
        self._runtimes[agent_id] = runtime

    def remove(self, agent_id: str) -> None:
        self._tenants.pop(agent_id, None)
        self._runtimes.pop(agent_id, None)

    def runtime_of(self, agent_id: str) -> str | None:
        """How the agent runs ("process" or "a2a" for packages, "external" for agents registered without one)."""
        return self._runtimes.get(agent_id)

    def check(self, spec: TaskSpec) -> None:
        """RefuseUnknownAgent: an agent_id must name a registered agent of the task's tenant."""
        agent_id = spec.agent_definition.agent_id
        if agent_id is None:
            return
        if self._tenants.get(agent_id) != spec.tenant_id:
            raise InvalidTask(
                f"agent_definition.agent_id {agent_id!r} names no registered agent of tenant {spec.tenant_id!r} "
                "(GET /api/v1/agents lists them)",
                code="unknown_agent",
                job_id=spec.job_id,
                tenant_id=spec.tenant_id,
            )

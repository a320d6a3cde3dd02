"""Process-agent packages for tests: copied into the fabric's agents directory under a unique
name, found by the real discovery scan, then registered to a tenant.

Registration (binding a discovered package to a tenant) is the registry's phase 2 API; until it
lands, `register` binds the discovered row with one UPDATE and the registry's own transition.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import update

from agent_fabric.agents.states import AgentStatus
from agent_fabric.storage.agent_tables import agents
from tests.conftest import RunningApp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "agents"
TEST_AGENTS = Path(__file__).resolve().parent / "agents"


def package(agents_dir: Path, source: str, **hints: str) -> Path:
    """Copy package `source` (examples/agents/<x> or tests/support/agents/<x>) under a unique name,
    with extra .env.discovery keys (AGENT_MIN_IDLE="2", AGENT_MEMORY_MB="64", ...)."""
    origin = EXAMPLES / source if (EXAMPLES / source).is_dir() else TEST_AGENTS / source
    suffix = uuid.uuid4().hex[:8]
    target = agents_dir / f"{source}-{suffix}"
    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = target / ".env.discovery"
    lines = [
        f"AGENT_NAME={line.split('=', 1)[1]}-{suffix}" if line.startswith("AGENT_NAME=") else line
        for line in manifest.read_text().splitlines()
    ]
    lines += [f"{key}={value}" for key, value in hints.items()]
    manifest.write_text("\n".join(lines) + "\n")
    return target.resolve()


async def register(app: RunningApp, path: Path, tenant: str) -> str:
    report = await app.fabric.agents.discovery.scan()
    found = [p for p in report.packages if p.path == path]
    assert found and found[0].agent_id, f"package not discovered: {report.view()}"
    agent_id = str(found[0].agent_id)
    async with app.fabric.engine.begin() as conn:
        await conn.execute(update(agents).where(agents.c.id == agent_id).values(tenant_id=tenant))
    await app.fabric.agents.registry.transition(agent_id, AgentStatus.REGISTERED, reason="test", actor="test")
    return agent_id


def process_task(job_id: str, agent_id: str, kind: str, inp: dict[str, object] | None = None, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "process", "agent_id": agent_id},
        "task": {"type": kind, "input": inp or {}},
        **extra,
    }

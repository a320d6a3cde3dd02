"""Process-agent packages for tests: copied into the fabric's agents directory under a unique
name, found by the real discovery scan, then registered to a tenant with a one-time discovery
token through POST /api/v1/agents, as an operator would."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RunningApp
from tests.support.flows import auth_as

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


def manifest_of(path: Path) -> dict[str, str]:
    lines = (path / ".env.discovery").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


async def register_over_http(
    client: httpx.AsyncClient, base: str, path: Path, tenant: str, operator: dict[str, str]
) -> str:
    """Register the discovered package at `path` for `tenant`: mint a discovery token as the
    tenant's operator, then register with it (the agent's side of the handshake)."""
    minted = await client.post(f"{base}/api/v1/agents/discovery-tokens", headers=operator, json={})
    assert minted.status_code == 201, minted.text
    values = manifest_of(path)
    body = {
        "agent_name": values["AGENT_NAME"],
        "agent_version": values["AGENT_VERSION"],
        "agent_type": values["AGENT_TYPE"],
        "discovery_token": minted.json()["discovery_token"],
    }
    done = await client.post(f"{base}/api/v1/agents", json=body)
    assert done.status_code == 201, done.text
    agent: dict[str, Any] = done.json()["agent"]
    assert agent["tenant_id"] == tenant and agent["package_path"] == str(path)
    return str(agent["agent_id"])


async def register(app: RunningApp, path: Path, tenant: str) -> str:
    report = await app.fabric.agents.discovery.scan()
    assert [p for p in report.packages if p.path == path and p.status == "discovered"], report.view()
    operator = auth_as(app, "ops", "pod_admin", tenant)
    return await register_over_http(app.client, "", path, tenant, operator)


def process_task(job_id: str, agent_id: str, kind: str, inp: dict[str, object] | None = None, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "process", "agent_id": agent_id},
        "task": {"type": kind, "input": inp or {}},
        **extra,
    }

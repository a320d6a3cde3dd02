"""Dependencies across real processes: the dependency finishes on one `agent-fabric serve`, the
dependent (parked by the other) is released by the first one's finish and runs on the other.
Real NATS, Postgres, Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.test_governance_replicas import ADMIN, start, status_of, stop
from tests.support import services
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def env(replica_env: dict[str, str]) -> dict[str, str]:
    return {**replica_env, "AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS": "20"}


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def owners(postgres_url: str, pod: str) -> dict[str, str]:
    dsn = services.with_database(services.POSTGRES_DSN, postgres_url.rsplit("/", 1)[-1])
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT job_id, owner FROM tasks WHERE tenant_id = $1", pod)
    finally:
        await conn.close()
    return {r["job_id"]: r["owner"] for r in rows}


async def test_a_dependency_finishing_on_one_replica_releases_its_dependent_on_another(
    tmp_path: Path, env: dict[str, str], postgres_url: str
) -> None:
    servers = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(*servers)
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    first, second, doomed = "extract", "load", "report"
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def submit(url: str, body: dict[str, object]) -> str:
                r = await client.post(f"{url}/api/v1/tasks", headers=ADMIN, json={**body, "tenant_id": pod})
                assert r.status_code == 202, r.text
                return str(r.json()["status"])

            sleep = {"type": "sleep", "input": {"seconds": 2.0}}
            await submit(servers[0].url, {"job_id": first, "agent_definition": {"runtime": "builtin"}, "task": sleep})
            await status_of(client, servers[0].url, first, pod, {"running"})
            owner = (await owners(postgres_url, pod))[first]
            runner = next(s for s in servers if s.proc is not None and f"-{s.proc.pid}-" in owner)
            other = next(s for s in servers if s is not runner)
            echo = {"type": "echo", "input": {"after": first}}
            body = {"job_id": second, "agent_definition": {"runtime": "builtin"}, "task": echo, "depends_on": [first]}
            assert await submit(other.url, body) == "waiting"
            fail = {"type": "fail", "input": {"code": "bad_input"}}
            chained = {"job_id": doomed, "agent_definition": {"runtime": "builtin"}, "task": fail}
            assert await submit(other.url, {**chained, "depends_on": [second]}) == "waiting"
            # The runner stops taking work but finishes what it runs: `first` ends there, its
            # finish releases `second` through the outbox, and only the other replica can run it.
            runner.sigterm()
            done = await status_of(client, other.url, second, pod, {"completed", "failed"})
            assert done["status"] == "completed" and done["result"] == {"after": first}
            upstream = await status_of(client, other.url, first, pod, {"completed"})
            assert at(done["started_at"]) >= at(upstream["finished_at"])
            last = await status_of(client, other.url, doomed, pod, {"completed", "failed"})
            assert last["status"] == "failed" and last["error"]["code"] == "bad_input"
            assert await asyncio.to_thread(runner.wait, 30) in (0, -15)  # uvicorn re-raises SIGTERM
    except BaseException:
        for server in servers:
            print(f"--- {server.log_path.name}\n{server.log()}")  # pytest shows it with the failure
        raise
    finally:
        stop(*servers)
    ran_by = await owners(postgres_url, pod)
    assert runner.proc is not None and other.proc is not None
    assert f"-{runner.proc.pid}-" in ran_by[first] and f"-{other.proc.pid}-" in ran_by[second]
    assert f"-{other.proc.pid}-" in ran_by[doomed]
    for server in servers:
        assert "Traceback" not in server.log()

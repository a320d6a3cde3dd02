"""Process agents across real `agent-fabric serve` processes on one NATS and Postgres: kill -9 of
the fabric with its agent busy (the agent exits, another replica resumes the task from its
checkpoint on its own process, one result), SIGTERM of the fabric stops its agents gracefully,
and two replicas share one agent's tasks."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.settings import DatabaseSettings, Settings
from agent_fabric.storage.agent_process_tables import agent_process_runs
from agent_fabric.storage.engine import create_engine
from agent_fabric.storage.tables import checkpoints, tasks
from tests.e2e.test_cancel_replicas import running_on
from tests.e2e.test_governance_replicas import ADMIN, bearer, start, status_of, stop
from tests.integration.test_process_agents import alive
from tests.support.flows import collect, for_job
from tests.support.process_agents import package, process_task, register_over_http
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database=DatabaseSettings(url=postgres_url)))
    yield engine
    await engine.dispose()


@pytest.fixture
def env(replica_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    (tmp_path / "packages").mkdir()
    return {
        **replica_env,
        "AGENT_FABRIC_AGENTS_DIR": str(tmp_path / "packages"),
        "AGENT_FABRIC_AGENTS_CONFIG": '{"heartbeat_interval_seconds": 2}',
        "AGENT_FABRIC_PROCESS_BACKOFF_BASE_SECONDS": "0.1",
        "AGENT_FABRIC_SHUTDOWN_GRACE_SECONDS": "5",
    }


async def register(server: ServeProcess, path: Path, tenant: str) -> str:
    """Register the package the replica discovered at start-up, over its HTTP API."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await register_over_http(client, server.url, path, tenant, bearer("ops", "pod_admin", tenant))


async def steps_saved(db: AsyncEngine, pod: str, job: str) -> int:
    async with db.connect() as conn:
        query = (
            select(func.count())
            .select_from(checkpoints)
            .where(checkpoints.c.tenant_id == pod, checkpoints.c.thread_id == job)
        )
        return int((await conn.execute(query)).scalar_one())


async def busy_pid(client: httpx.AsyncClient, server: ServeProcess, agent_id: str, job: str) -> int:
    async with asyncio.timeout(30):
        while True:
            found = (await client.get(f"{server.url}/api/v1/agents/{agent_id}/health", headers=ADMIN)).json()
            for proc in found.get("processes", []):
                if proc["job_id"] == job:
                    return int(proc["pid"])
            await asyncio.sleep(0.1)


async def test_kill_9_of_the_fabric_with_its_agent_busy_resumes_on_the_other_replica(
    tmp_path: Path, env: dict[str, str], db: AsyncEngine, nc: Client
) -> None:
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    path = package(tmp_path / "packages", "steps")
    a, b = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(a)
    agent_id = await register(a, path, pod)
    await start(b)
    job = f"steps-{uuid.uuid4().hex[:8]}"
    try:
        async with httpx.AsyncClient(timeout=10) as client, collect(nc, "agent.status.completed") as completed:
            body = {**process_task(job, agent_id, "steps", {"steps": 10, "step_seconds": 0.4}), "tenant_id": pod}
            assert (await client.post(f"{a.url}/api/v1/tasks", headers=ADMIN, json=body)).status_code == 202
            owner = await running_on(db, pod, job, a, b)
            agent_pid = await busy_pid(client, owner, agent_id, job)
            async with asyncio.timeout(30):
                while await steps_saved(db, pod, job) < 2:
                    await asyncio.sleep(0.05)
            owner.kill9()
            async with asyncio.timeout(15):  # its stdin closed: the orphaned agent stops and exits
                while alive(agent_pid):
                    await asyncio.sleep(0.1)
            survivor = b if owner is a else a
            record = await status_of(client, survivor.url, job, pod, {"completed", "failed"})
            await asyncio.sleep(1.0)
        assert record["status"] == "completed", record
        assert record["result"]["resumed_from"] >= 2 and agent_pid not in record["result"]["pids"][1:]
        assert len(for_job(completed, job)) == 1
    finally:
        stop(a, b)


async def test_sigterm_of_the_fabric_stops_its_agents_gracefully(
    tmp_path: Path, env: dict[str, str], db: AsyncEngine
) -> None:
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    path = package(tmp_path / "packages", "echo", AGENT_MIN_IDLE="2")
    a = ServeProcess(tmp_path / "a", env, "a")
    await start(a)
    agent_id = await register(a, path, pod)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{a.url}/api/v1/agents/{agent_id}/start", headers=ADMIN)
            assert response.status_code == 202, response.text
            async with asyncio.timeout(30):
                while (
                    len(
                        pids := [
                            p["pid"]
                            for p in (
                                await client.get(f"{a.url}/api/v1/agents/{agent_id}/health", headers=ADMIN)
                            ).json()["processes"]
                            if p["state"] == "idle"
                        ]
                    )
                    < 2
                ):
                    await asyncio.sleep(0.1)
        a.sigterm()
        assert await asyncio.to_thread(a.wait, 30) in (0, -15)  # uvicorn re-raises the signal after its shutdown
        assert not any(alive(pid) for pid in pids)
        async with db.connect() as conn:
            rows = (
                (await conn.execute(select(agent_process_runs).where(agent_process_runs.c.agent_id == agent_id)))
                .mappings()
                .all()
            )
        assert len(rows) == 2
        assert all(
            r["outcome"] == "stopped" and r["reason"] == "fabric shutting down" and r["exit_code"] == 0 for r in rows
        )
    finally:
        stop(a)


async def test_two_replicas_share_one_agents_tasks(tmp_path: Path, env: dict[str, str], db: AsyncEngine) -> None:
    one_at_a_time = {**env, "AGENT_FABRIC_WORKER_CONCURRENCY": "1", "AGENT_FABRIC_WORKER_FETCH_BATCH": "1"}
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    path = package(tmp_path / "packages", "echo")
    a, b = ServeProcess(tmp_path / "a", one_at_a_time, "a"), ServeProcess(tmp_path / "b", one_at_a_time, "b")
    await start(a)
    agent_id = await register(a, path, pod)
    await start(b)
    jobs = [f"share-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for job in jobs:
                body: dict[str, Any] = {**process_task(job, agent_id, "sleep", {"seconds": 1}), "tenant_id": pod}
                assert (await client.post(f"{a.url}/api/v1/tasks", headers=ADMIN, json=body)).status_code == 202
            for job in jobs:
                assert (await status_of(client, a.url, job, pod, {"completed", "failed"}))["status"] == "completed"
        async with db.connect() as conn:
            owners = (
                (
                    await conn.execute(
                        select(agent_process_runs.c.owner).where(agent_process_runs.c.agent_id == agent_id)
                    )
                )
                .scalars()
                .all()
            )
            attempts = (await conn.execute(select(tasks.c.attempts).where(tasks.c.tenant_id == pod))).scalars().all()
        assert len(set(owners)) == 2  # each replica ran the agent's processes
        assert attempts == [1] * 6
    finally:
        stop(a, b)
    shutil.rmtree(tmp_path / "packages", ignore_errors=True)

"""Cancelling across real processes: the request reaches the replica NOT running the task, and a
task whose owner was killed -9 ends cancelled on its next claim without running. Real NATS, Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_fabric.settings import DatabaseSettings, Settings
from agent_fabric.storage.engine import create_engine
from agent_fabric.storage.tables import tasks
from tests.e2e.test_governance_replicas import ADMIN, bearer, start, status_of, stop
from tests.support.flows import collect, for_job
from tests.support.serve import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def env(replica_env: dict[str, str]) -> dict[str, str]:
    return replica_env


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database=DatabaseSettings(url=postgres_url)))
    yield engine
    await engine.dispose()


async def running_on(db: AsyncEngine, pod: str, job: str, *servers: ServeProcess) -> ServeProcess:
    """The replica that holds the task (its lease owner names the process id)."""
    async with asyncio.timeout(20):
        while True:
            async with db.connect() as conn:
                owner = (
                    await conn.execute(
                        select(tasks.c.owner).where(
                            tasks.c.tenant_id == pod, tasks.c.job_id == job, tasks.c.status == "running"
                        )
                    )
                ).scalar()
            for server in servers:
                assert server.proc is not None
                if owner is not None and f"-{server.proc.pid}-" in owner:
                    return server
            await asyncio.sleep(0.05)


def sleeper(job: str, seconds: float = 60) -> dict[str, Any]:
    return {
        "job_id": job,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": "sleep", "input": {"seconds": seconds}},
    }


async def test_a_cancel_sent_to_the_other_replica_stops_the_driver(
    tmp_path: Path, env: dict[str, str], db: AsyncEngine, nc: Client
) -> None:
    a, b = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(a, b)
    pod, job = f"pod-{uuid.uuid4().hex[:8]}", f"far-{uuid.uuid4().hex[:8]}"
    alice = bearer("alice", "agent", pod)
    try:
        async with httpx.AsyncClient(timeout=10) as client, collect(nc, "agent.status.cancelled") as cancelled:
            assert (await client.post(f"{a.url}/api/v1/tasks", headers=alice, json=sleeper(job))).status_code == 202
            owner = await running_on(db, pod, job, a, b)
            other = b if owner is a else a
            asked = time.monotonic()
            response = await client.post(f"{other.url}/api/v1/tasks/{job}/cancel", headers=alice, json={"reason": "x"})
            assert response.status_code == 202 and response.json()["status"] == "running", response.text
            done = await status_of(client, other.url, job, pod, {"cancelled", "completed", "failed"})
            took = time.monotonic() - asked
            await asyncio.sleep(0.5)
        assert done["status"] == "cancelled" and done["error"]["message"] == "cancelled by alice: x"
        assert took < 2.0, f"the owner stopped the driver only after {took:.2f} s"
        assert len(for_job(cancelled, job)) == 1
    finally:
        stop(a, b)
    for server in (a, b):
        assert "Traceback" not in server.log()


async def test_a_task_whose_owner_died_ends_cancelled_on_its_next_claim(
    tmp_path: Path, env: dict[str, str], db: AsyncEngine, nc: Client
) -> None:
    a, b = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(a, b)
    pod, job = f"pod-{uuid.uuid4().hex[:8]}", f"orphan-{uuid.uuid4().hex[:8]}"
    alice = bearer("alice", "agent", pod)
    try:
        async with httpx.AsyncClient(timeout=10) as client, collect(nc, "agent.status.cancelled") as cancelled:
            assert (await client.post(f"{a.url}/api/v1/tasks", headers=alice, json=sleeper(job))).status_code == 202
            owner = await running_on(db, pod, job, a, b)
            survivor = b if owner is a else a
            owner.kill9()
            response = await client.post(f"{survivor.url}/api/v1/tasks/{job}/cancel", headers=alice)
            assert response.status_code == 202 and response.json()["status"] == "running"
            done = await status_of(client, survivor.url, job, pod, {"cancelled", "completed", "failed"})
            await asyncio.sleep(0.5)
            events = await client.get(f"{survivor.url}/api/v1/tasks/{job}/events?tenant_id={pod}", headers=ADMIN)
        assert done["status"] == "cancelled" and done["attempts"] == 2
        assert done["error"] == {"code": "cancelled", "message": "cancelled by alice"}
        assert len(for_job(cancelled, job)) == 1
        # The second attempt never ran the driver: no progress from it, only its start and end.
        second = [line for line in events.text.splitlines() if line.startswith("id: 2-")]
        assert len(second) == 3, events.text
    finally:
        stop(a, b)
    assert "Traceback" not in survivor.log()

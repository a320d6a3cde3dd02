"""An agent's processes on every replica, seen from any replica: two fabrics on one Postgres and
NATS each run the agent's processes; the health answer of either lists both replicas' processes
(its own current, the other's as last recorded), and a replica that stopped recording shows its
processes as stale."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from agent_fabric.storage.agent_process_tables import agent_process_runs
from tests.conftest import RunningApp, running_app
from tests.integration.test_process_agents import process_settings
from tests.support.flows import new_pod
from tests.support.process_agents import package, register


async def _replicas(app: RunningApp, agent_id: str) -> list[dict[str, Any]]:
    response = await app.client.get(f"/api/v1/agents/{agent_id}/health", headers=app.auth())
    assert response.status_code == 200, response.text
    return list(response.json()["replicas"])


async def _until(app: RunningApp, agent_id: str, check: Any, timeout: float = 40) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while not check(found := await _replicas(app, agent_id)):
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"replicas never matched; last: {found}") from None
    return found


async def test_health_lists_every_replicas_processes_and_marks_a_silent_one_stale(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "packages").mkdir(parents=True)
    settings_a = process_settings(tmp_path / "a", nats_url, postgres_url, redis_url)
    settings_b = process_settings(tmp_path / "b", nats_url, postgres_url, redis_url)
    async with running_app(settings_a) as a, running_app(settings_b) as b:
        pod = new_pod()
        agent_id = await register(a, package(tmp_path / "a" / "packages", "echo"), pod)
        started = await a.client.post(f"/api/v1/agents/{agent_id}/start", headers=a.auth())
        assert started.status_code == 202, started.text

        def both_ready(replicas: list[dict[str, Any]]) -> bool:
            return len(replicas) == 2 and all(
                r["processes"] and all(p["state"] == "idle" for p in r["processes"]) for r in replicas
            )

        seen_from_a = await _until(a, agent_id, both_ready)
        mine, other = seen_from_a
        assert mine["this_replica"] and not other["this_replica"] and mine["replica"] != other["replica"]
        remote = other["processes"][0]
        assert remote["last_heartbeat_at"] and remote["recorded_at"] and not remote["stale"]
        assert remote["pid"] and remote["tasks_done"] == 0 and remote["job_id"] is None
        seen_from_b = await _until(b, agent_id, both_ready)
        assert {r["replica"] for r in seen_from_b} == {mine["replica"], other["replica"]}
        assert [r["this_replica"] for r in seen_from_b] == [True, False]

        # A replica that died keeps its rows open, but stops recording them: stale.
        async with a.fabric.engine.begin() as conn:
            long_ago = datetime.now(UTC) - timedelta(minutes=2)
            await conn.execute(
                insert(agent_process_runs).values(
                    run_id=uuid.uuid4().hex,
                    agent_id=agent_id,
                    tenant_id=pod,
                    process=f"{agent_id}/9",
                    owner="replica-gone",
                    pid=4242,
                    started_at=long_ago,
                    recorded_at=long_ago,
                    heartbeat_at=long_ago,
                    state="busy",
                    job_id="job-lost",
                    tasks_done=3,
                )
            )
        gone = [r for r in await _replicas(a, agent_id) if r["replica"] == "replica-gone"]
        assert len(gone) == 1 and gone[0]["processes"][0]["stale"] and gone[0]["processes"][0]["job_id"] == "job-lost"

        # Stopped on every replica: their runs end, and no replica lists live processes any more.
        stopped = await a.client.post(f"/api/v1/agents/{agent_id}/stop", headers=a.auth())
        assert stopped.status_code in (200, 202), stopped.text
        await _until(a, agent_id, lambda rs: [r["replica"] for r in rs] == ["replica-gone"])

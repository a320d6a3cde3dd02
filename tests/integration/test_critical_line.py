"""Issue 14: on Postgres a critical task's claim runs on a connection of its own, one statement
(storage/critical_line.py), and falls back to the urgent writer when that connection is gone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from nats.aio.client import Client

from agent_fabric.tasks import TaskStatus
from tests.conftest import RunningApp, new_job_id
from tests.integration.test_nats_door import collect, for_job, structured, task, until
from tests.integration.test_settle_at_once import _running_elsewhere

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def line_count(app: RunningApp, outcome: str) -> float:
    value: float = app.fabric.metrics.ops.critical_line.labels(outcome)._value.get()
    return value


async def run_critical(app: RunningApp, nc: Client, job: str) -> dict[str, Any]:
    async with collect(nc, "agent.status.completed") as completed:
        body = {**task(job), "priority": "critical"}
        await nc.jetstream().publish("agent.execute.critical", structured(body), headers=app.auth())
        await until(lambda: for_job(completed, job), timeout=30)
    data: dict[str, Any] = for_job(completed, job)[0]["data"]
    return data


async def test_a_critical_task_is_claimed_on_its_own_line(fabric_app: RunningApp, nc: Client) -> None:
    before = line_count(fabric_app, "ok")
    job = new_job_id("crit-line")
    data = await run_critical(fabric_app, nc, job)
    assert data["attempts"] == 1 and data["result"] == {"msg": "hi"}
    assert line_count(fabric_app, "ok") == before + 1 and line_count(fabric_app, "failed") == 0
    events = await fabric_app.fabric.store.events_after("default", job, None)
    assert [(e["attempt"], e["n"], e["status"]) for e in events][:1] == [(1, 0, "running")]


async def test_a_cut_line_falls_back_to_the_writer_and_reconnects(
    fabric_app: RunningApp, nc: Client, postgres_url: str
) -> None:
    await run_critical(fabric_app, nc, new_job_id("crit-warm"))  # the line holds a connection now
    line = fabric_app.fabric.store._line
    assert line is not None and line._free
    pids = [held.driver.get_server_pid() for held in line._free]
    admin = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        for pid in pids:  # the database side ends the line's connections (a restart, an idle timeout)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    failed = line_count(fabric_app, "failed")
    cut = await run_critical(fabric_app, nc, new_job_id("crit-cut"))
    assert cut["attempts"] == 1 and cut["status"] == "completed"
    assert line_count(fabric_app, "failed") == failed + 1  # the writer took that claim
    ok = line_count(fabric_app, "ok")
    again = await run_critical(fabric_app, nc, new_job_id("crit-again"))
    assert again["attempts"] == 1 and line_count(fabric_app, "ok") == ok + 1  # a fresh connection


async def test_a_critical_task_under_a_live_lease_elsewhere_is_left_to_its_owner(
    fabric_app: RunningApp, nc: Client
) -> None:
    job = new_job_id("crit-leased")
    await _running_elsewhere(fabric_app, job, lease=timedelta(minutes=5), cancel=False)
    duplicates = fabric_app.fabric.metrics.duplicates
    before = duplicates._value.get()
    body = {**task(job), "priority": "critical"}
    await nc.jetstream().publish("agent.execute.critical", structured(body), headers=fabric_app.auth())
    await until(lambda: duplicates._value.get() > before, timeout=30)
    record = await fabric_app.fabric.store.get("default", job)
    assert record is not None and (record.status, record.owner, record.attempts) == (
        TaskStatus.RUNNING,
        "other-replica",
        1,
    )

"""Scheduling on real NATS: priorities under backlog, tenant fairness, queue limits, caps, 200 slots.

Each test runs its own app with few worker slots, occupies them with a sleeping task, queues a
backlog behind it and then reads the order in which tasks started from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from sqlalchemy import select

from agent_fabric.errors import InvalidTask
from agent_fabric.settings import SchedulerSettings, WorkerSettings
from agent_fabric.storage.queue_store import QueueLimits, QueueStore
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import spec_hash
from agent_fabric.tasks import AgentDefinition, Priority, TaskBody, TaskSpec, TaskStatus
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.integration.test_nats_door import collect, for_job, structured, task, until


@asynccontextmanager
async def scheduling_app(
    backend: str,
    tmp_path: Path,
    nats_url: str,
    postgres_url: str,
    *,
    concurrency: int,
    **scheduler: Any,
) -> AsyncIterator[RunningApp]:
    settings = make_settings(
        tmp_path,
        nats_url,
        database_url=postgres_url if backend == "postgres" else None,
        worker=WorkerSettings(concurrency=concurrency),
        scheduler=SchedulerSettings(**scheduler),
    )
    async with running_app(settings) as app:
        yield app


async def publish(nc: Client, priority: str, job: str, **extra: Any) -> None:
    await nc.jetstream().publish(f"agent.execute.{priority}", structured(task(job, **extra)))


def sleeper(seconds: float) -> dict[str, Any]:
    return {"kind": "sleep", "inp": {"seconds": seconds}}


async def status_of(app: RunningApp, tenant: str, job: str) -> str | None:
    record = await app.fabric.store.get(tenant, job)
    return record.status.value if record else None


async def wait_status(app: RunningApp, tenant: str, job: str, *statuses: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while await status_of(app, tenant, job) not in statuses:
            await asyncio.sleep(0.02)


async def start_order(app: RunningApp, tenant: str | None = None) -> list[tuple[str, str]]:
    """(tenant, job) of every started task, in the order they started."""
    stmt = select(tasks.c.tenant_id, tasks.c.job_id).where(tasks.c.started_at.is_not(None))
    if tenant is not None:
        stmt = stmt.where(tasks.c.tenant_id == tenant)
    async with app.fabric.engine.connect() as conn:
        rows = (await conn.execute(stmt.order_by(tasks.c.started_at, tasks.c.job_id))).all()
    return [(r.tenant_id, r.job_id) for r in rows]


async def occupy_slot(app: RunningApp, nc: Client, priority: str, tenant: str, seconds: float) -> str:
    """A sleeping task that holds a worker slot: returns its job once it runs."""
    blocker = new_job_id("blocker")
    await publish(nc, priority, blocker, tenant_id=tenant, **sleeper(seconds))
    await wait_status(app, tenant, blocker, "running")
    return blocker


async def register_agents(app: RunningApp, tenant: str, count: int) -> list[str]:
    """Registered agents of `tenant` (an agent_id must name one, or the task is `unknown_agent`)."""
    ids = []
    for i in range(count):
        done = await app.fabric.agents.registrar.register(
            name=f"worker-{i}", version="1.0.0", agent_type="worker", actor="test", tenant_id=tenant
        )
        app.fabric.agents.directory.add(done.agent.id, tenant, done.agent.runtime)
        ids.append(done.agent.id)
    return ids


async def most_at_once(app: RunningApp, tenant: str) -> int:
    """The most of the tenant's tasks that ran at the same moment, from their recorded run times."""
    async with app.fabric.engine.connect() as conn:
        rows = (
            await conn.execute(select(tasks.c.started_at, tasks.c.finished_at).where(tasks.c.tenant_id == tenant))
        ).all()
    edges = sorted([(r.started_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows])
    running = peak = 0
    for _, step in edges:  # at equal times the end (-1) sorts first: touching runs do not overlap
        running += step
        peak = max(peak, running)
    return peak


async def queued_count(app: RunningApp, tenant: str) -> int:
    async with app.fabric.engine.connect() as conn:
        rows = await conn.execute(
            select(tasks.c.job_id).where(tasks.c.tenant_id == tenant, tasks.c.status == TaskStatus.QUEUED.value)
        )
        return len(rows.all())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_critical_starts_before_any_further_low_task(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    tenant = new_job_id("prio")
    async with scheduling_app(
        backend, tmp_path, nats_url, postgres_url, concurrency=1, reserved_critical_slots=0
    ) as app:
        blocker = await occupy_slot(app, nc, "low", tenant, 2.0)
        lows = [new_job_id("low") for _ in range(300)]
        await asyncio.gather(*(publish(nc, "low", job, tenant_id=tenant) for job in lows))
        await until(lambda: len(app.fabric.consumer.queue) >= 300)  # the backlog is held, not only in the stream
        critical = new_job_id("critical")
        await publish(nc, "critical", critical, tenant_id=tenant)
        high = new_job_id("high")
        await publish(nc, "high", high, tenant_id=tenant)
        await until(lambda: len(app.fabric.consumer.queue) >= 302)
        assert await status_of(app, tenant, blocker) == "running"
        for job in lows:
            await wait_status(app, tenant, job, "completed")
        order = [job for _, job in await start_order(app, tenant)]
    assert order[:4] == [blocker, critical, high, lows[0]]
    assert order[3:] == lows  # same class, same tenant: first in, first out


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_task_that_finds_a_free_slot_starts_without_a_queued_record(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    """One write per task when it need not wait: its claim creates its row. Only a task that
    waits for a slot is recorded as queued first (and counted by the queue limits)."""
    tenant = new_job_id("free")
    async with scheduling_app(
        backend, tmp_path, nats_url, postgres_url, concurrency=1, reserved_critical_slots=0
    ) as app:
        first = new_job_id("first")
        await publish(nc, "normal", first, tenant_id=tenant, **sleeper(1.0))
        await wait_status(app, tenant, first, "running")
        second = new_job_id("second")
        await publish(nc, "normal", second, tenant_id=tenant)
        await wait_status(app, tenant, second, "queued")
        await wait_status(app, tenant, second, "completed")
        logged = {job: await app.fabric.store.events_after(tenant, job, None) for job in (first, second)}
    states = {job: [e["status"] for e in events if e["kind"] == "state"] for job, events in logged.items()}
    assert states[first] == ["running", "completed"]
    assert states[second] == ["queued", "running", "completed"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_reserved_slot_starts_critical_work_while_long_tasks_hold_every_ordinary_slot(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    tenant = new_job_id("reserved")
    async with scheduling_app(
        backend, tmp_path, nats_url, postgres_url, concurrency=1, reserved_critical_slots=1
    ) as app:
        blocker = await occupy_slot(app, nc, "low", tenant, 4.0)
        normal, critical, second = new_job_id("normal"), new_job_id("critical"), new_job_id("critical2")
        await publish(nc, "normal", normal, tenant_id=tenant)
        await publish(nc, "critical", critical, tenant_id=tenant, **sleeper(1.0))
        await publish(nc, "critical", second, tenant_id=tenant)
        await wait_status(app, tenant, second, "completed", timeout=4)  # after the first, in the reserved slot
        assert await status_of(app, tenant, blocker) == "running"
        assert await status_of(app, tenant, normal) == "queued"  # ordinary work waits for an ordinary slot
        await wait_status(app, tenant, normal, "completed")
        order = [job for _, job in await start_order(app, tenant)]
    assert order == [blocker, critical, second, normal]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_one_tenant_flooding_delays_another_by_one_slot_turn_at_most(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    flooder, other = new_job_id("flood"), new_job_id("single")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1) as app:
        blocker = await occupy_slot(app, nc, "normal", flooder, 2.0)
        flood = [new_job_id("f") for _ in range(500)]
        await asyncio.gather(*(publish(nc, "normal", job, tenant_id=flooder) for job in flood))
        single = new_job_id("s")
        await publish(nc, "normal", single, tenant_id=other)
        await until(lambda: len(app.fabric.consumer.queue) >= 501)
        await wait_status(app, other, single, "completed")
        for job in flood:
            await wait_status(app, flooder, job, "completed")
        order = [job for _, job in await start_order(app) if job in {blocker, single, *flood}]
    # The blocker held the only slot; the other tenant's task took the very next turn.
    assert order[:2] == [blocker, single]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_queue_depth_limits_refuse_with_queue_full(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    tenant = new_job_id("limited")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1, max_queued_per_tenant=3) as app:
        await occupy_slot(app, nc, "normal", tenant, 3.0)  # running: no longer counted as queued
        jobs = [new_job_id("q") for _ in range(5)]
        async with collect(nc, "agent.status.failed") as failed:
            for job in jobs:
                await publish(nc, "normal", job, tenant_id=tenant)
            await until(lambda: sum(len(for_job(failed, j)) for j in jobs) >= 2)
            refused = [e for j in jobs for e in for_job(failed, j)]
        assert len(refused) == 2 and await queued_count(app, tenant) == 3
        for event in refused:
            assert event["data"]["status"] == "rejected"
            assert event["data"]["error"]["code"] == "queue_full"
            assert "limit 3" in event["data"]["error"]["message"]
        # Over HTTP: 429 problem JSON, nothing recorded, so the same job_id can come back later.
        token = app.token("admin", tenant)
        job = new_job_id("http")
        body = {
            "job_id": job,
            "tenant_id": tenant,
            "agent_definition": {"runtime": "builtin"},
            "task": {"type": "echo"},
        }
        response = await app.client.post("/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "queue_full" and response.headers["Retry-After"] == "1"
        assert await app.fabric.store.get(tenant, job) is None
        await wait_status(app, tenant, jobs[2], "completed")
        again = await app.client.post("/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 202, again.text


@pytest.mark.parametrize("backend", ["postgres"])
async def test_queue_depth_limit_per_agent(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    tenant = new_job_id("agents")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1, max_queued_per_agent=2) as app:
        await occupy_slot(app, nc, "normal", tenant, 3.0)
        token = app.token("admin", tenant)
        a1, a2 = await register_agents(app, tenant, 2)  # an agent_id names a registered agent
        codes = []
        for agent in (a1, a1, a1, a2):
            body = {
                "job_id": new_job_id(agent),
                "tenant_id": tenant,
                "agent_definition": {"runtime": "builtin", "agent_id": agent},
                "task": {"type": "echo"},
            }
            response = await app.client.post("/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
            codes.append(response.status_code)
        assert codes == [202, 202, 429, 202]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_a_task_recorded_already_does_not_take_a_second_place_in_the_queue(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str
) -> None:
    """The HTTP door records a task, then the NATS door fetches it and records it again: when both
    land in one batch with a new task, the new task must not be refused for the old one's place."""
    tenant = new_job_id("again")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1) as app:
        store = QueueStore(app.fabric.engine, QueueLimits(per_agent=2), linger_ms=300, max_items=50)
        store.start()
        try:

            def spec(job: str) -> TaskSpec:
                return TaskSpec(
                    job_id=job,
                    tenant_id=tenant,
                    agent_definition=AgentDefinition(runtime="builtin", agent_id="a1"),
                    task=TaskBody(type="echo"),
                )

            first, second, third = spec(new_job_id("one")), spec(new_job_id("two")), spec(new_job_id("three"))
            assert (await store.enqueue(first, spec_hash(first), None)).inserted
            # One batch (the writer lingers 300 ms): the first again, then two new tasks for one place.
            again, fits, refused = await asyncio.gather(
                store.enqueue(first, spec_hash(first), None),
                store.enqueue(second, spec_hash(second), None),
                store.enqueue(third, spec_hash(third), None),
            )
        finally:
            await store.shutdown()
    assert not again.inserted and again.full is None and again.existing is not None
    assert fits.inserted
    assert not refused.inserted and refused.full is not None and "limit 2" in refused.full


@pytest.mark.parametrize("backend", ["postgres"])
async def test_tenant_running_cap(backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client) -> None:
    capped, free = new_job_id("capped"), new_job_id("free")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=8, tenant_caps={capped: 2}) as app:
        capped_jobs = [new_job_id("c") for _ in range(6)]
        free_jobs = [new_job_id("f") for _ in range(4)]
        for job in capped_jobs:
            await publish(nc, "normal", job, tenant_id=capped, **sleeper(0.4))
        for job in free_jobs:
            await publish(nc, "normal", job, tenant_id=free, **sleeper(0.4))
        for job in capped_jobs:
            await wait_status(app, capped, job, "completed")
        for job in free_jobs:
            await wait_status(app, free, job, "completed")
        peak = {tenant: await most_at_once(app, tenant) for tenant in (capped, free)}
    assert peak[capped] == 2  # never more than its cap, and the cap was used
    assert peak[free] == 4  # the other tenant was not held back by the capped one


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_hundred_agents_run_at_once(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    """FR-SCHED-1: 200 agent slots busy at the same time, each with its own agent."""
    tenant = new_job_id("fleet")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=200) as app:
        jobs = [new_job_id(f"agent{i}") for i in range(200)]
        agent_ids = await register_agents(app, tenant, 200)
        await asyncio.gather(
            *(
                nc.jetstream().publish(
                    "agent.execute.normal",
                    structured(
                        {
                            "job_id": job,
                            "tenant_id": tenant,
                            "agent_definition": {"runtime": "builtin", "agent_id": agent_ids[i]},
                            "task": {"type": "sleep", "input": {"seconds": 3}},
                        }
                    ),
                )
                for i, job in enumerate(jobs)
            )
        )
        peak = 0
        async with asyncio.timeout(30):
            while True:
                peak = max(peak, app.fabric.consumer.queue.running_by_tenant[tenant])
                statuses = [await status_of(app, tenant, job) for job in jobs[::20]]
                if all(s == "completed" for s in statuses):
                    break
                await asyncio.sleep(0.05)
        for job in jobs:
            await wait_status(app, tenant, job, "completed")
        async with app.fabric.engine.connect() as conn:
            rows = (
                await conn.execute(select(tasks.c.started_at, tasks.c.finished_at).where(tasks.c.tenant_id == tenant))
            ).all()
    assert peak == 200
    assert len(rows) == 200
    assert max(r.started_at for r in rows) < min(r.finished_at for r in rows)  # all 200 overlapped


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_agent_scheduler_interface_and_pending_route(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    """The seed's AgentScheduler: schedule, get_status, list_pending (also over HTTP)."""
    tenant = new_job_id("iface")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1) as app:
        scheduler = app.fabric.scheduler
        blocker = await scheduler.schedule(
            TaskBody(type="sleep", input={"seconds": 2}), "builtin", tenant_id=tenant, task_id=new_job_id("b")
        )
        assert blocker.status == TaskStatus.QUEUED and blocker.created
        await wait_status(app, tenant, blocker.task_id, "running")
        handles = [
            await scheduler.schedule(
                TaskBody(type="echo"), "builtin", Priority.LOW, tenant_id=tenant, task_id=new_job_id("p")
            )
            for _ in range(3)
        ]
        pending = await scheduler.list_pending("builtin", tenant_id=tenant)
        assert [s.job_id for s in pending] == [h.task_id for h in handles]
        assert await scheduler.list_pending("builtin/other", tenant_id=tenant) == []
        assert await scheduler.get_status(handles[0].task_id, tenant_id=tenant) == TaskStatus.QUEUED
        token = app.token("viewer", tenant)
        response = await app.client.get("/api/v1/agents/builtin/pending", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert [i["job_id"] for i in response.json()["items"]] == [h.task_id for h in handles]
        other = app.token("viewer", new_job_id("other"))
        response = await app.client.get(
            f"/api/v1/agents/builtin/pending?tenant_id={tenant}", headers={"Authorization": f"Bearer {other}"}
        )
        assert response.status_code == 403
        with pytest.raises(InvalidTask):
            await scheduler.schedule(TaskBody(type="echo"), "no-such-runtime", tenant_id=tenant)
        for handle in handles:
            await wait_status(app, tenant, handle.task_id, "completed")
        assert await scheduler.get_status(blocker.task_id, tenant_id=tenant) == TaskStatus.COMPLETED
        assert await scheduler.list_pending("builtin", tenant_id=tenant) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_tasks_waiting_for_dependencies_count_against_the_queue_limit(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, nc: Client
) -> None:
    tenant = new_job_id("waiters")
    async with scheduling_app(backend, tmp_path, nats_url, postgres_url, concurrency=1, max_queued_per_tenant=2) as app:
        token = app.token("admin", tenant)
        missing = new_job_id("later")
        statuses = []
        for _ in range(3):
            body = {
                "job_id": new_job_id("w"),
                "tenant_id": tenant,
                "depends_on": [missing],
                "agent_definition": {"runtime": "builtin"},
                "task": {"type": "echo"},
            }
            response = await app.client.post("/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
            answer = response.json()
            statuses.append((response.status_code, answer["code"] if response.status_code >= 400 else answer["status"]))
        assert statuses == [(202, "waiting"), (202, "waiting"), (429, "queue_full")]

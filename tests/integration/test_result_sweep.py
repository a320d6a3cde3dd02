"""Every finished task's result is published and noted so, even when the replica that ran it died
between acking the task message and noting the publish (nothing is redelivered then), or before
its result ever went out. The sweep publishes a result only where AGENT_STATUS lacks it."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import orjson
from nats.aio.client import Client
from sqlalchemy import insert, select, update

from agent_fabric.outbound.result_sweep import ResultSweeper
from agent_fabric.outbound.results import ResultPublisher, result_event_id
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import utcnow
from tests.chaos.support import stored_results
from tests.conftest import RunningApp, new_job_id
from tests.integration.test_nats_door import structured, task, until, until_marked


async def _finished(app: RunningApp, nc: Client, seen: Counter[str]) -> str:
    job = new_job_id("sweep")
    await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=app.auth())
    await until(lambda: seen[result_event_id("default", job)] == 1)
    await until_marked(app, job)
    return job


async def _unmark(app: RunningApp, job: str, finished_ago: float) -> None:
    """The row as a replica killed right after its ack leaves it."""
    async with app.fabric.engine.begin() as conn:
        await conn.execute(
            update(tasks)
            .where(tasks.c.tenant_id == "default", tasks.c.job_id == job)
            .values(result_published=False, finished_at=utcnow() - timedelta(seconds=finished_ago))
        )


async def _never_published(app: RunningApp, like: str) -> str:
    """A finished task whose result never went out (its replica died before publishing, and its
    message ran out of deliveries): a copy of a finished row under a new job id."""
    job = new_job_id("lost")
    async with app.fabric.engine.begin() as conn:
        row = (await conn.execute(select(tasks).where(tasks.c.tenant_id == "default", tasks.c.job_id == like))).one()
        await conn.execute(insert(tasks).values({**row._mapping, "job_id": job, "event_id": None}))
    return job


def _sweeper(app: RunningApp, nc: Client) -> ResultSweeper:
    return ResultSweeper(app.fabric.engine, ResultPublisher(nc, nc.jetstream()), app.fabric.metrics, grace_seconds=30)


async def test_the_sweep_notes_results_already_out_and_publishes_those_that_are_not(
    fabric_app: RunningApp, nc: Client
) -> None:
    seen: Counter[str] = Counter()

    async def on_result(msg: Any) -> None:
        seen[orjson.loads(msg.data)["id"]] += 1

    sub = await nc.subscribe("agent.status.completed", cb=on_result)
    await nc.flush()
    try:
        out, recent = [await _finished(fabric_app, nc, seen) for _ in range(2)]
        lost = await _never_published(fabric_app, out)
        # `out`'s result is in the stream; `lost`'s never went out; `recent` finished inside the
        # grace period, so its live owner may still be about to note it.
        await _unmark(fabric_app, out, 40)
        await _unmark(fabric_app, lost, 40)
        await _unmark(fabric_app, recent, 5)
        swept_before = fabric_app.fabric.metrics.results_swept._value.get()

        assert await _sweeper(fabric_app, nc).sweep() == 2
        assert await _sweeper(fabric_app, nc).sweep() == 0  # noted: nothing left to do

        await until(lambda: seen[result_event_id("default", lost)] == 1)
        assert seen[result_event_id("default", out)] == 1  # found in the stream, not sent again
        assert seen[result_event_id("default", recent)] == 1
        stored = await stored_results(nc)
        assert stored[result_event_id("default", lost)] == 1
        assert stored[result_event_id("default", out)] == 1
        marks = {
            job: (await fabric_app.fabric.store.get("default", job)).result_published  # type: ignore[union-attr]
            for job in (out, lost, recent)
        }
        assert marks == {out: True, lost: True, recent: False}
        assert fabric_app.fabric.metrics.results_swept._value.get() == swept_before + 2
    finally:
        await sub.unsubscribe()

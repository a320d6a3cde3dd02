"""Issue 11, item 5: a result the stream already holds is not published again (core subscribers
would see it twice); the fabric looks in AGENT_STATUS by the result's CloudEvent id first."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import orjson
from nats.aio.client import Client
from sqlalchemy import update

from agent_fabric import names
from agent_fabric.outbound.result_lookup import result_stored
from agent_fabric.outbound.results import result_event, result_event_id
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import utcnow
from tests.conftest import RunningApp, new_job_id
from tests.integration.test_nats_door import structured, task, until


async def test_lookup_finds_a_stored_result_by_its_id(fabric_app: RunningApp, nc: Client) -> None:
    job = new_job_id("lookup")
    async with asyncio.timeout(30):
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        while (record := await fabric_app.fabric.store.get("default", job)) is None or not record.result_published:
            await asyncio.sleep(0.05)
    subject, _, event_id = result_event(record)
    js = nc.jetstream()
    assert await result_stored(js, subject, event_id, record.finished_at)
    assert not await result_stored(js, subject, result_event_id("default", "never-ran"), record.finished_at)
    assert not await result_stored(js, names.status_subject("failed"), event_id, record.finished_at)
    consumers = await js.consumers_info(names.STATUS_STREAM)
    assert consumers == []  # each lookup removes its consumer


async def test_a_later_delivery_of_a_finished_task_does_not_publish_its_result_again(
    fabric_app: RunningApp, nc: Client
) -> None:
    """What a replica taking over sees: the task finished, its result is in the stream, but the
    'published' mark never reached the database (the first replica died in between)."""
    job = new_job_id("takeover")
    seen: Counter[str] = Counter()

    async def on_result(msg: Any) -> None:
        seen[orjson.loads(msg.data)["id"]] += 1

    sub = await nc.subscribe("agent.status.completed", cb=on_result)
    await nc.flush()
    try:
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        event_id = result_event_id("default", job)
        await until(lambda: seen[event_id] == 1)
        async with asyncio.timeout(30):  # the mark is written just after the ack
            while not (r := await fabric_app.fabric.store.get("default", job)) or not r.result_published:
                await asyncio.sleep(0.05)
        async with fabric_app.fabric.engine.begin() as conn:
            await conn.execute(
                update(tasks)
                .where(tasks.c.tenant_id == "default", tasks.c.job_id == job)
                .values(result_published=False, finished_at=utcnow() - timedelta(seconds=10))
            )
        # The same job again under a new event id: the runner finds it finished and unmarked.
        await nc.jetstream().publish("agent.execute.normal", structured(task(job)), headers=fabric_app.auth())
        async with asyncio.timeout(30):
            while not (r := await fabric_app.fabric.store.get("default", job)) or not r.result_published:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert seen[event_id] == 1
    finally:
        await sub.unsubscribe()

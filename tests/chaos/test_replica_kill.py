"""Issue 11, item 5 (replica kill): two `serve` replicas, one killed -9 while tasks run. Every
task completes (the survivor resumes the dead one's tasks from their checkpoints), AGENT_STATUS
holds each result once, and the core subject repeats none: a result the dead replica published
but never noted is found in the stream, not published again."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from agent_fabric.outbound.results import result_event_id
from tests.chaos.support import (
    publish_through,
    publisher_auth,
    statuses,
    stored_results,
    task_event,
    until_all_completed,
    until_all_published,
)
from tests.conftest import new_job_id
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_killing_a_replica_mid_run_completes_everything_and_repeats_nothing(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> None:
    env = {
        "AGENT_FABRIC_NATS_URL": nats_url,
        "AGENT_FABRIC_DATABASE_URL": postgres_url,
        "AGENT_FABRIC_REDIS_URL": redis_url,
        "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "3",
        "AGENT_FABRIC_LOG_JSON": "true",
    }
    replicas = [ServeProcess(tmp_path / name, env, name=name) for name in ("a", "b")]
    engine = create_async_engine(postgres_url)
    watcher = await nats.connect(nats_url)
    seen: Counter[str] = Counter()

    async def on_result(msg: Any) -> None:
        seen[orjson.loads(msg.data)["id"]] += 1

    await watcher.subscribe("agent.status.completed", cb=on_result)
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start, 90.0)
        jobs = [new_job_id("kill") for _ in range(40)]
        for i, job in enumerate(jobs):
            inp = {"seconds": 1 + (i % 8) * 0.5}
            await publish_through(
                watcher, "agent.execute.normal", *task_event(job, "sleep", inp), auth=publisher_auth(JWT_SECRET)
            )

        async def busy() -> None:
            while (await statuses(engine, jobs)).get("completed", 0) < 5:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(busy(), timeout=60)
        replicas[0].kill9()
        await until_all_completed(engine, jobs, timeout=150)
        await until_all_published(engine, jobs)
        await asyncio.sleep(2)
        wanted = {result_event_id("default", job) for job in jobs}
        assert {event_id: n for event_id, n in seen.items() if event_id in wanted and n > 1} == {}
        assert all(seen[event_id] == 1 for event_id in wanted)
        stored = await stored_results(watcher)
        assert {event_id: stored[event_id] for event_id in wanted if stored[event_id] != 1} == {}
    finally:
        for replica in replicas:
            replica.stop()
        await watcher.close()
        await engine.dispose()

"""Issue 11, item 5: results are not repeated on the core subject when the fabric can avoid it.

NATS is killed -9 and comes back 7 s later while tasks finish: their results wait in the client's
reconnect buffer. Before the fix each result publish timed out after 5 s and was sent again into
the same buffer, so core subscribers of agent.status.completed saw both copies after the
reconnect (the stream dropped the second). Now a buffered publish is waited for, and a retry
looks in AGENT_STATUS first."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
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
from tests.conftest import JWT_SECRET, make_settings, new_job_id, running_app
from tests.support.nats_restartable import RestartableNats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestartableNats]:
    running = RestartableNats(tmp_path / "nats")
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def test_a_nats_restart_repeats_no_result_on_the_core_subject(
    tmp_path: Path, server: RestartableNats, postgres_url: str, redis_url: str
) -> None:
    settings = make_settings(
        tmp_path, server.url, database_url=postgres_url, redis_url=redis_url, nats={"ack_wait_seconds": 10}
    )
    engine = create_async_engine(postgres_url)
    # The watcher reconnects faster than the fabric, so it is subscribed again before the fabric's
    # buffered results go out: a repeat would reach it.
    watcher = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    seen: Counter[str] = Counter()

    async def on_result(msg: Any) -> None:
        seen[orjson.loads(msg.data)["id"]] += 1

    await watcher.subscribe("agent.status.completed", cb=on_result)
    try:
        async with running_app(settings):
            jobs = [new_job_id("restart") for _ in range(40)]
            for i, job in enumerate(jobs):
                # Spread over 1-8 s, so results keep coming before, during and after the outage.
                inp = {"seconds": 1 + (i % 15) * 0.5}
                await publish_through(
                    watcher, "agent.execute.normal", *task_event(job, "sleep", inp), auth=publisher_auth(JWT_SECRET)
                )

            async def some_running() -> None:
                while (await statuses(engine, jobs)).get("running", 0) < 10:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(some_running(), timeout=60)
            server.kill9()
            await asyncio.sleep(7)
            server.start()
            await until_all_completed(engine, jobs, timeout=150)
            await until_all_published(engine, jobs)
            await asyncio.sleep(2)  # stragglers of a repeat would arrive by now
        wanted = {result_event_id("default", job) for job in jobs}
        repeated = {event_id: n for event_id, n in seen.items() if event_id in wanted and n > 1}
        assert repeated == {}
        stored = await stored_results(watcher)
        assert {event_id: stored[event_id] for event_id in wanted if stored[event_id] != 1} == {}
    finally:
        await watcher.close()
        await engine.dispose()

"""Issue 11, item 4: Postgres unreachable for a few seconds while `sleep` tasks checkpoint. The
database is taken away by a TCP proxy between the fabric and Postgres (the server itself stays
up): every task completes, none fails with driver_error, and /ready is 503 during the cut and
200 after. The 12 s cut outlasts the tasks: they finish while the database is away, so their
outcome writes must wait it out too (a few retries and a hand-back left them stuck, because this
process kept renewing their leases)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from agent_fabric.storage.tables import tasks
from tests.chaos.support import publish_through, publisher_auth, statuses, task_event, until_all_completed
from tests.conftest import JWT_SECRET, make_settings, new_job_id, running_app
from tests.support.tcp_proxy import proxy_to

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.parametrize("cut_seconds", [3.0, 12.0])
async def test_tasks_checkpointing_through_a_database_cut_all_complete(
    tmp_path: Path, nats_url: str, nc: Client, postgres_url: str, redis_url: str, cut_seconds: float
) -> None:
    target = urlsplit(postgres_url)
    async with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        settings = make_settings(tmp_path, nats_url, database_url=proxy.url_for(postgres_url), redis_url=redis_url)
        direct = create_async_engine(postgres_url)  # the test's own view, around the proxy
        try:
            async with running_app(settings) as app:
                sleepers = [new_job_id("cut") for _ in range(30)]
                for job in sleepers:
                    # Checkpoints every second: with 30 running, writes are in flight all through the cut.
                    await publish_through(
                        nc,
                        "agent.execute.normal",
                        *task_event(job, "sleep", {"seconds": 4}),
                        auth=publisher_auth(JWT_SECRET),
                    )
                # These write nothing while they run, so they finish inside the cut: their outcome
                # is the write that meets the outage.
                spenders = [new_job_id("cut-spend") for _ in range(10)]
                for job in spenders:
                    await publish_through(
                        nc,
                        "agent.execute.normal",
                        *task_event(job, "spend", {"seconds": 3}),
                        auth=publisher_auth(JWT_SECRET),
                    )
                jobs = sleepers + spenders

                async def running() -> None:
                    while (await statuses(direct, jobs)).get("running", 0) < len(jobs) // 2:
                        await asyncio.sleep(0.1)

                await asyncio.wait_for(running(), timeout=60)
                await asyncio.sleep(1.2)  # at least one checkpoint each behind them
                await proxy.cut()
                during = await app.client.get("/ready")
                await asyncio.sleep(cut_seconds)
                await proxy.restore()

                assert during.status_code == 503, during.text
                assert "database" in during.json()["failing"]
                await until_all_completed(direct, jobs, timeout=120)

                async def ready_again() -> None:
                    while (await app.client.get("/ready")).status_code != 200:
                        await asyncio.sleep(0.2)

                await asyncio.wait_for(ready_again(), timeout=30)
        finally:
            await direct.dispose()


async def test_critical_tasks_published_into_a_database_cut_complete_once_it_is_back(
    tmp_path: Path, nats_url: str, nc: Client, postgres_url: str, redis_url: str
) -> None:
    """Issue 14: a critical claim runs on a connection of its own (storage/critical_line.py). Cut
    under it, the claim goes to the urgent writer, which waits the outage out like every write."""
    target = urlsplit(postgres_url)
    async with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        settings = make_settings(tmp_path, nats_url, database_url=proxy.url_for(postgres_url), redis_url=redis_url)
        direct = create_async_engine(postgres_url)
        try:
            async with running_app(settings) as app:
                auth = publisher_auth(JWT_SECRET)
                warm = new_job_id("crit-warm")
                await publish_through(nc, "agent.execute.critical", *task_event(warm), auth=auth)
                await until_all_completed(direct, [warm], timeout=30)  # the line holds a connection now
                line = app.fabric.metrics.ops.critical_line
                assert line.labels("ok")._value.get() == 1
                await proxy.cut()
                jobs = [new_job_id("crit-cut") for _ in range(3)]
                for job in jobs:
                    await publish_through(nc, "agent.execute.critical", *task_event(job), auth=auth)
                await asyncio.sleep(3)
                await proxy.restore()
                await until_all_completed(direct, jobs, timeout=90)
                assert line.labels("failed")._value.get() >= 1  # the cut line gave its claim to the writer
                async with direct.connect() as conn:
                    attempts = (
                        await conn.execute(
                            select(tasks.c.attempts).where(tasks.c.tenant_id == "default", tasks.c.job_id.in_(jobs))
                        )
                    ).scalars()
                    assert sorted(attempts) == [1, 1, 1]
        finally:
            await direct.dispose()

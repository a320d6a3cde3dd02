"""Issue 11, item 6: `serve` on a 3-node NATS cluster given as a comma-separated
AGENT_FABRIC_NATS_URL, R3 streams, and the task stream's leader killed -9 mid-run: every task
completes and each result is stored once in AGENT_STATUS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import create_async_engine

from agent_fabric import names
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
from tests.support.nats_cluster import Cluster, running_nats_cluster
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    with running_nats_cluster(tmp_path / "cluster") as running:
        yield running


async def cluster_client(cluster: Cluster) -> Client:
    return await nats.connect(
        cluster.urls.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=5
    )


async def test_serve_on_a_cluster_survives_losing_the_stream_leader(
    tmp_path: Path, cluster: Cluster, postgres_url: str, redis_url: str
) -> None:
    fabric = ServeProcess(
        tmp_path / "state",
        {
            "AGENT_FABRIC_NATS_URL": cluster.urls.replace(",", ", "),  # as an operator writes it
            "AGENT_FABRIC_NATS_STREAM_REPLICAS": "3",
            "AGENT_FABRIC_NATS_ACK_WAIT_SECONDS": "5",
            "AGENT_FABRIC_DATABASE_URL": postgres_url,
            "AGENT_FABRIC_REDIS_URL": redis_url,
            "AGENT_FABRIC_LOG_JSON": "true",
        },
    )
    nc = await cluster_client(cluster)
    engine = create_async_engine(postgres_url)
    try:
        await asyncio.to_thread(fabric.start, 90.0)
        js = nc.jetstream()
        info = await js.stream_info(names.TASK_STREAM)
        assert info.config.num_replicas == 3
        before = [new_job_id("cl-sleep") for _ in range(20)] + [new_job_id("cl-echo") for _ in range(20)]
        for job in before:
            kind, inp = ("sleep", {"seconds": 2}) if job.startswith("cl-sleep") else ("echo", None)
            await publish_through(
                nc, "agent.execute.normal", *task_event(job, kind, inp), auth=publisher_auth(JWT_SECRET)
            )

        async def some_running() -> None:
            while (await statuses(engine, before)).get("running", 0) < 5:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(some_running(), timeout=60)
        leader = (await js.stream_info(names.TASK_STREAM)).cluster.leader  # type: ignore[union-attr]
        assert leader is not None
        cluster.node(leader).kill()

        after = [new_job_id("cl-after") for _ in range(20)]
        for job in after:
            await publish_through(nc, "agent.execute.high", *task_event(job), auth=publisher_auth(JWT_SECRET))
        await until_all_completed(engine, before + after, timeout=150)
        await until_all_published(engine, before + after)
        assert fabric.proc is not None and fabric.proc.poll() is None, fabric.log()

        stored = await stored_results(nc)
        wanted = {result_event_id("default", job) for job in before + after}
        counts = {event_id: stored[event_id] for event_id in wanted}
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    finally:
        fabric.stop()
        await nc.close()
        await engine.dispose()

"""Metrics move under real work (FR-TEL-1/4): a fabric on Postgres, Redis and NATS, with the Agent
Zero stand-in, runs real tasks, and the series read from GET /metrics change by what was done.
Values, not only names; labels bounded (no job ids)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import orjson
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from agent_fabric import names
from agent_fabric.settings import SchedulerSettings, WorkerSettings
from agent_fabric.storage.tables import tasks
from agent_fabric.storage.task_store import utcnow
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.integration.conftest import agent_zero_settings
from tests.support.flows import new_pod, task, task_status


async def scrape(app: RunningApp) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    app.app.state.state_gauges._at = 0.0  # no 5 s throttle between the scrapes of a test
    text = (await app.client.get("/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


async def test_series_move_under_real_work(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, Any]
) -> None:
    settings = agent_zero_settings(
        tmp_path, nats_url, standin[0], postgres_url, redis_url, nats={"ack_wait_seconds": 3}
    )
    async with running_app(settings) as app:
        admin = app.auth()
        before = await scrape(app)
        pod = new_pod()
        # A budget, so the seed's usage ratio has something to say.
        put = await app.client.put(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=admin, json={"max_tokens": 1000})
        assert put.status_code == 200, put.text
        jobs = [new_job_id("m") for _ in range(6)]
        for job in jobs[:4]:
            submitted = await app.client.post("/api/v1/tasks", headers=admin, json=task(job, tenant_id=pod))
            assert submitted.status_code == 202
        spend = task(jobs[4], "spend", {"tokens": 250}, tenant_id=pod)
        assert (await app.client.post("/api/v1/tasks", headers=admin, json=spend)).status_code == 202
        failing = task(jobs[5], "fail", {"code": "boom"}, tenant_id=pod)
        assert (await app.client.post("/api/v1/tasks", headers=admin, json=failing)).status_code == 202
        chat = new_job_id("az")
        agent_zero_task = {
            "job_id": chat,
            "tenant_id": pod,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": "CHAT", "message": "hello"},
        }
        assert (await app.client.post("/api/v1/tasks", headers=admin, json=agent_zero_task)).status_code == 202
        for job in [*jobs, chat]:
            await task_status(app, job, {"completed", "failed"}, tenant=pod)
        assert (await app.client.get("/api/v1/tasks/no-such-job", headers=admin)).status_code == 404
        assert (await app.client.get("/definitely/not/a/route")).status_code == 404
        session = await app.client.post(
            f"/api/v2/agent/message?tenant_id={pod}", headers=admin, json={"message": "status please"}
        )
        assert session.status_code in (200, 201), session.text
        await app.fabric.governance.budgets.fold()
        after = await scrape(app)

        def grew(name: str, by: float = 1, **labels: str) -> None:
            delta = value(after, name, **labels) - value(before, name, **labels)
            assert delta >= by, f"{name}{labels} moved by {delta}, expected at least {by}"

        # The seed's six series.
        grew("agent_fabric_tasks_total", 4, agent_id="builtin", status="completed")
        grew("agent_fabric_tasks_total", 1, agent_id="builtin", status="failed")
        grew("agent_fabric_task_duration_seconds_count", 7)
        grew("agent_fabric_tokens_total", 250, agent_id="builtin", model="builtin")
        assert value(after, "agent_fabric_budget_usage_ratio", entity_id=f"{pod}/tenant") >= 0.25
        grew("agent_fabric_policy_decisions_total", 7, decision="allow")
        # HTTP by route template, method and status; unknown paths in one bounded label.
        grew("agent_fabric_http_requests_total", 7, route="/api/v1/tasks", method="POST", status="202")
        grew("agent_fabric_http_requests_total", 1, route="/api/v1/tasks/{job_id}", method="GET", status="404")
        grew("agent_fabric_http_requests_total", 1, route="unmatched", method="GET", status="404")
        grew("agent_fabric_http_request_duration_seconds_count", 7, route="/api/v1/tasks", method="POST")
        # Agent Zero calls by instance, operation and outcome, with latency.
        grew("agent_fabric_agent_zero_calls_total", 2, operation="api_message", outcome="ok")
        grew("agent_fabric_agent_zero_call_seconds_count", 2, operation="api_message")
        # Group commit: batches and their commits.
        grew("agent_fabric_write_batch_size_count", 1, writer="shared")
        grew("agent_fabric_write_commit_seconds_count", 1, writer="shared", outcome="ok")
        grew("agent_fabric_write_batch_size_sum", 7, writer="queue-normal")  # the door's queued records
        # Database-wide state and dependencies.
        assert value(after, "agent_fabric_agent_sessions") >= 1
        assert value(after, "agent_fabric_dependency_up", dependency="database") == 1
        assert value(after, "agent_fabric_dependency_up", dependency="nats") == 1
        assert value(after, "agent_fabric_agent_zero_instance_up") == 1
        no_job_ids = [ls for (_, ls) in after if any(v in (*jobs, chat) for _, v in ls)]
        assert not no_job_ids, f"job ids used as label values: {no_job_ids}"


async def test_queue_lag_open_tasks_and_overdue_runs_are_seen(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> None:
    """One slot busy with a long task: what is published meanwhile is lag on its class's consumer
    and open work by tenant and priority; a running task pushed past its timeout counts overdue."""
    settings = make_settings(
        tmp_path,
        nats_url,
        database_url=postgres_url,
        redis_url=redis_url,
        nats={"ack_wait_seconds": 3},
        worker=WorkerSettings(concurrency=1),
        scheduler=SchedulerSettings(reserved_critical_slots=0),
    )
    async with running_app(settings) as app:
        pod = new_pod()
        admin = app.auth()
        blocker = new_job_id("block")
        long_task = task(blocker, "sleep", {"seconds": 20}, tenant_id=pod, timeout_seconds=600)
        assert (await app.client.post("/api/v1/tasks", headers=admin, json=long_task)).status_code == 202
        await task_status(app, blocker, {"running"}, tenant=pod)
        nc = await nats.connect(nats_url)
        try:
            tok = app.token()
            for _ in range(5):
                event = {
                    "specversion": "1.0",
                    "id": new_job_id("ev"),
                    "source": "test",
                    "type": names.TASK_EVENT_TYPE,
                    "data": task(new_job_id("lag"), tenant_id=pod),
                }
                await nc.jetstream().publish(
                    names.task_subject("low"), orjson.dumps(event), headers={"Authorization": f"Bearer {tok}"}
                )
        finally:
            await nc.close()
        low_consumer = names.consumer_name("low")

        async with asyncio.timeout(20):  # lag is read every ack_wait / 3 = 1 s
            while value(await scrape(app), "agent_fabric_consumer_pending", consumer=low_consumer) < 3:
                await asyncio.sleep(0.2)
        samples = await scrape(app)
        assert value(samples, "agent_fabric_tasks_open", tenant_id=pod, priority="normal", status="running") == 1
        assert value(samples, "agent_fabric_tasks_overdue") == 0
        # The runner of a task stops it at its timeout; a row still running past it means a
        # runner that is stuck or gone. Make it look so: started long before its timeout.
        async with app.fabric.engine.begin() as conn:
            await conn.execute(
                update(tasks)
                .where(tasks.c.tenant_id == pod, tasks.c.job_id == blocker)
                .values(started_at=utcnow().replace(year=utcnow().year - 1))
            )
        assert value(await scrape(app), "agent_fabric_tasks_overdue") == 1
        await app.client.post(f"/api/v1/tasks/{blocker}/cancel?tenant_id={pod}", headers=admin)
        await task_status(app, blocker, {"cancelled"}, tenant=pod)

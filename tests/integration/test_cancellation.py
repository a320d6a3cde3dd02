"""Cancellation and timeouts on both backends: a waiting task never starts, a running task's driver
stops, one result on agent.status.cancelled; refusals as problem JSON. Real NATS, SQLite/Postgres."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from agent_fabric import names
from agent_fabric.settings import AgentZeroSettings, WorkerSettings
from agent_fabric.storage import cancel_store
from agent_fabric.storage.task_store import utcnow
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.agent_zero_standin import STANDIN_KEY, AgentZeroStandIn
from tests.support.flows import audit, auth_as, collect, for_job, new_pod, put_policy, task, task_status, until


@pytest.fixture
async def one_slot(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> AsyncIterator[RunningApp]:
    """One task at a time; a lease of 3 s, so a missed cancel broadcast is caught within 1 s."""
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    settings = make_settings(
        tmp_path,
        nats_url,
        database_url=db,
        redis_url=redis,
        worker=WorkerSettings(concurrency=1),
        nats={"ack_wait_seconds": 3},
    )
    async with running_app(settings) as app:
        yield app


async def cancel(app: RunningApp, job: str, headers: dict[str, str], **body: Any) -> Any:
    return await app.client.post(f"/api/v1/tasks/{job}/cancel", headers=headers, json=body or None)


async def idle(app: RunningApp) -> None:
    """Every message of the task stream fetched and acked (nothing left to run)."""

    async def settled() -> bool:
        for priority in names.PRIORITIES:
            info = await app.fabric.js.consumer_info(names.TASK_STREAM, names.consumer_name(priority))
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async with asyncio.timeout(15):
        while not await settled():
            await asyncio.sleep(0.05)


async def test_a_queued_task_never_starts_and_gives_back_its_reservation(one_slot: RunningApp, nc: Client) -> None:
    app, pod = one_slot, new_pod()
    await app.client.put(
        f"/api/v1/config/{pod}", headers=app.auth(), json={"mode": "LIVE", "budget": {"max_cost_usd": 10}}
    )
    alice = auth_as(app, "alice", "agent", pod)
    blocker, victim = new_job_id("blocker"), new_job_id("victim")
    victim_task = task(victim, "spend", {"cost_usd": 1}, metadata={"estimate_cost_usd": "4"})
    async with collect(nc, "agent.status.>") as results:
        assert (
            await app.client.post("/api/v1/tasks", headers=alice, json=task(blocker, "sleep", {"seconds": 1}))
        ).is_success
        await task_status(app, blocker, {"running"}, pod)
        assert (await app.client.post("/api/v1/tasks", headers=alice, json=victim_task)).json()["status"] == "queued"
        budget = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=alice)).json()
        assert budget["reserved"]["cost_usd"] == 4.0

        response = await cancel(app, victim, alice, reason="not needed")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "cancelled" and response.json()["already"] is False
        again = await cancel(app, victim, alice)
        assert again.status_code == 200 and again.json() == {**response.json(), "already": True}

        await task_status(app, blocker, {"completed"}, pod)
        await idle(app)  # the victim's message was fetched and acked by now
        await asyncio.sleep(0.2)
    cancelled = [e for e in for_job(results, victim) if e["type"] != "agent.status.running"]
    assert [e["type"] for e in cancelled] == ["agent.status.cancelled"]
    assert cancelled[0]["data"]["error"] == {"code": "cancelled", "message": "cancelled by alice: not needed"}
    record = await task_status(app, victim, {"cancelled"}, pod)
    assert record["attempts"] == 0 and record["started_at"] is None
    logged = await app.fabric.store.events_after(pod, victim, None)
    assert [(e["kind"], e["status"]) for e in logged] == [
        ("state", "queued"),
        ("state", "cancelled"),
        ("end", "cancelled"),
    ]
    await app.fabric.governance.budgets.fold()
    budget = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=alice)).json()
    assert budget["reserved"]["cost_usd"] == 0.0 and budget["used"]["cost_usd"] == 0.0
    trail = await audit(app, action="task.cancel", tenant_id=pod)
    assert [(e["actor"], e["response"]["outcome"]) for e in trail] == [("alice", "cancelled")]


async def test_a_task_awaiting_approval_is_cancelled_and_its_approval_closed(
    fabric_app: RunningApp, nc: Client
) -> None:
    pod = new_pod()
    await put_policy(
        fabric_app,
        f"{pod}-gate",
        [{"action_pattern": "task:echo", "effect": "require_approval", "approvers": ["bob"]}],
        pod,
    )
    alice, bob = auth_as(fabric_app, "alice", "pod_admin", pod), auth_as(fabric_app, "bob", "pod_admin", pod)
    job = new_job_id("gated")
    async with collect(nc, "agent.status.cancelled") as results, collect(nc, "agent.approvals.decided") as decided:
        submitted = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=task(job))
        assert submitted.json()["status"] == "awaiting_approval"
        approval_id = submitted.json()["approval"]["id"]
        response = await cancel(fabric_app, job, alice)
        assert response.status_code == 202 and response.json()["status"] == "cancelled"
        await until(lambda: for_job(results, job) and decided, what="cancelled result and approval decision")
    late = await fabric_app.client.post(f"/api/v1/approvals/{approval_id}/approve", headers=bob)
    assert late.status_code == 409 and late.json()["code"] == "approval_not_pending"
    approval = (await fabric_app.client.get(f"/api/v1/approvals/{approval_id}", headers=bob)).json()
    assert approval["status"] == "rejected" and approval["decided_by"] == "alice"
    assert approval["reason"] == "cancelled by alice"
    assert decided[0]["data"]["status"] == "rejected"
    record = await task_status(fabric_app, job, {"cancelled"}, pod)
    assert record["error"] == {"code": "cancelled", "message": "cancelled by alice"}
    assert len(for_job(results, job)) == 1


async def test_a_running_task_stops_early_and_ends_cancelled_once(one_slot: RunningApp, nc: Client) -> None:
    app, pod = one_slot, new_pod()
    alice = auth_as(app, "alice", "agent", pod)
    job = new_job_id("sleeper")
    async with collect(nc, "agent.status.>") as results:
        await app.client.post("/api/v1/tasks", headers=alice, json=task(job, "sleep", {"seconds": 60}))
        await task_status(app, job, {"running"}, pod)
        asked = time.monotonic()
        response = await cancel(app, job, alice, reason="enough")
        assert response.status_code == 202, response.text
        assert response.json()["status"] in ("running", "cancelled") and response.json()["cancel_requested"] is True
        record = await task_status(app, job, {"cancelled"}, pod, timeout=5)
        took = time.monotonic() - asked
        again = await cancel(app, job, alice)
        assert again.status_code == 200 and again.json()["already"] is True
        await idle(app)
        await asyncio.sleep(0.2)
    assert took < 2.0
    assert record["error"] == {"code": "cancelled", "message": "cancelled by alice: enough"}
    finals = [e for e in for_job(results, job) if e["type"] != "agent.status.running"]
    assert [e["type"] for e in finals] == ["agent.status.cancelled"]
    assert finals[0]["data"]["status"] == "cancelled" and finals[0]["data"]["attempts"] == 1
    logged = await app.fabric.store.events_after(pod, job, None)
    assert [(e["kind"], e["status"]) for e in logged][-2:] == [("state", "cancelled"), ("end", "cancelled")]
    # The slot is free again: the next task runs.
    after = new_job_id("after")
    await app.client.post("/api/v1/tasks", headers=alice, json=task(after))
    await task_status(app, after, {"completed"}, pod)


async def test_a_missed_broadcast_is_caught_by_the_periodic_check(one_slot: RunningApp) -> None:
    app, pod = one_slot, new_pod()
    job = new_job_id("deaf")
    await app.client.post("/api/v1/tasks", headers=app.auth(), json=task(job, "sleep", {"seconds": 60}, tenant_id=pod))
    await task_status(app, job, {"running"}, pod)
    # Only the database mark, as if the broadcast had been lost: the check every ack_wait/3 (1 s) finds it.
    async with app.fabric.engine.begin() as conn:
        assert await cancel_store.mark_running(conn, pod, job, "cancelled by ops: broadcast lost", utcnow())
    record = await task_status(app, job, {"cancelled"}, pod, timeout=3)
    assert record["error"] == {"code": "cancelled", "message": "cancelled by ops: broadcast lost"}


async def test_finished_unknown_and_unauthorised_cancels_are_refused(fabric_app: RunningApp) -> None:
    pod = new_pod()
    agent = auth_as(fabric_app, "svc", "agent", pod)
    job = new_job_id("done")
    await fabric_app.client.post("/api/v1/tasks", headers=agent, json=task(job))
    await task_status(fabric_app, job, {"completed"}, pod)
    finished = await cancel(fabric_app, job, agent)
    assert finished.status_code == 409 and finished.headers["content-type"] == "application/problem+json"
    assert finished.json()["code"] == "task_finished" and finished.json()["task_status"] == "completed"

    unknown = await cancel(fabric_app, "no-such-job", agent)
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    assert (await cancel(fabric_app, "bad id!", agent)).status_code == 404

    waiting = new_job_id("waiting")
    await put_policy(fabric_app, f"{pod}-gate", [{"action_pattern": "task:echo", "effect": "require_approval"}], pod)
    await fabric_app.client.post("/api/v1/tasks", headers=agent, json=task(waiting))
    viewer = await cancel(fabric_app, waiting, auth_as(fabric_app, "v", "viewer", pod))
    assert viewer.status_code == 403 and viewer.json()["code"] == "forbidden"
    stranger = auth_as(fabric_app, "s", "pod_admin", new_pod())
    assert (await cancel(fabric_app, waiting, stranger)).status_code == 404
    crossing = await fabric_app.client.post(f"/api/v1/tasks/{waiting}/cancel?tenant_id={pod}", headers=stranger)
    assert crossing.status_code == 403
    assert (await task_status(fabric_app, waiting, {"awaiting_approval"}, pod))["status"] == "awaiting_approval"
    # An admin names the tenant, or not (the job id is unique across tenants here).
    admin = await cancel(fabric_app, waiting, fabric_app.auth())
    assert admin.status_code == 202 and admin.json()["tenant_id"] == pod
    bad_body = await fabric_app.client.post(f"/api/v1/tasks/{job}/cancel", headers=agent, json={"why": 1})
    assert bad_body.status_code == 422


async def test_the_default_timeout_ends_a_run_as_timed_out(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, nc: Client
) -> None:
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    settings = make_settings(
        tmp_path, nats_url, database_url=db, redis_url=redis, worker=WorkerSettings(default_timeout_seconds=0.5)
    )
    pod = new_pod()
    async with running_app(settings) as app, collect(nc, "agent.status.failed") as failed:
        by_default, own = new_job_id("default"), new_job_id("own")
        await app.client.post(
            "/api/v1/tasks", headers=app.auth(), json=task(by_default, "sleep", {"seconds": 30}, tenant_id=pod)
        )
        await app.client.post(
            "/api/v1/tasks",
            headers=app.auth(),
            json=task(own, "sleep", {"seconds": 30}, tenant_id=pod, timeout_seconds=0.3),
        )
        for job, limit in ((by_default, "0.5"), (own, "0.3")):
            record = await task_status(app, job, {"timed_out"}, pod, timeout=5)
            assert record["error"] == {"code": "timeout", "message": f"the run exceeded its {limit} s timeout"}
        await until(lambda: for_job(failed, by_default) and for_job(failed, own), what="timeout results")
        await asyncio.sleep(0.2)
    for job in (by_default, own):
        [event] = for_job(failed, job)
        assert event["data"]["status"] == "timed_out" and event["data"]["error"]["code"] == "timeout"


async def test_cancelling_an_agent_zero_task_resets_its_chat(
    tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, instance = standin
    settings = make_settings(
        tmp_path, nats_url, agent_zero=AgentZeroSettings(url=url, api_key=STANDIN_KEY, poll_seconds=0.1)
    )
    async with running_app(settings) as app:
        job, pod = new_job_id("az-cancel"), new_pod()
        body = {
            "job_id": job,
            "tenant_id": pod,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": "CHAT", "message": "[sleep 20] long work"},
        }
        assert (await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)).status_code == 202
        await until(lambda: instance.stats.messages >= 2, what="the task reaching Agent Zero")  # primed, then sent
        response = await cancel(app, job, app.auth(), reason="stop")
        assert response.status_code == 202 and response.json()["status"] == "running"
        record = await task_status(app, job, {"cancelled"}, pod, timeout=5)
    assert record["error"] == {"code": "cancelled", "message": "cancelled by test: stop"}
    assert instance.stats.resets == 1  # resetting the chat is what stops Agent Zero's run

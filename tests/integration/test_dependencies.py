"""Task dependencies (depends_on) on real NATS and SQLite/Postgres: order, fan-in, failure and its
cascade, cycles at both doors, missing dependencies, late dependencies, duplicates, approvals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from agent_fabric.settings import ApprovalSettings, SchedulerSettings
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.flows import auth_as, collect, for_job, new_pod, put_policy, structured, task, task_status, until

DONE = {"completed", "failed", "rejected", "cancelled", "timed_out"}


@pytest.fixture
async def app(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> AsyncIterator[RunningApp]:
    """The fabric with a 1.5 s wait for missing dependencies and a fast sweep. The outbox's own sweep
    is slowed to 30 s, so a release that did not kick the relay after its commit would show."""
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    scheduler = SchedulerSettings(dependency_wait_seconds=1.5, sweep_seconds=0.2)
    approval = ApprovalSettings(sweep_seconds=30)
    async with running_app(
        make_settings(tmp_path, nats_url, database_url=db, redis_url=redis, scheduler=scheduler, approval=approval)
    ) as a:
        yield a


async def submit(app: RunningApp, pod: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await app.client.post("/api/v1/tasks", headers=app.auth(), json={**body, "tenant_id": pod})
    assert response.status_code == 202, response.text
    return dict(response.json())


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_a_chain_runs_in_order(app: RunningApp) -> None:
    pod = new_pod()
    a, b = new_job_id("a"), new_job_id("b")
    assert (await submit(app, pod, task(a, "sleep", {"seconds": 3})))["status"] == "queued"
    answered = await submit(app, pod, task(b, "echo", {"after": a}, depends_on=[a]))
    assert answered["status"] == "waiting" and answered["created"]
    assert (await task_status(app, b, {"waiting"}, pod))["status"] == "waiting"
    again = await submit(app, pod, task(b, "echo", {"after": a}, depends_on=[a]))
    assert again["status"] == "waiting" and not again["created"]
    conflict = await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**task(b, "echo", {"other": 1}, depends_on=[a]), "tenant_id": pod}
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "job_exists"
    first = await task_status(app, a, DONE, pod)
    second = await task_status(app, b, DONE, pod)
    assert first["status"] == second["status"] == "completed" and second["result"] == {"after": a}
    assert 0 <= (at(second["started_at"]) - at(first["finished_at"])).total_seconds() < 1.0
    events = (await app.client.get(f"/api/v1/tasks/{b}/events?tenant_id={pod}", headers=app.auth())).text
    assert '"status":"waiting"' in events.replace(" ", "") and '"status":"completed"' in events.replace(" ", "")


async def test_fan_in_waits_for_every_dependency(app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    a, b, c = new_job_id("a"), new_job_id("b"), new_job_id("c")
    async with collect(nc, "agent.status.completed") as completed:
        await submit(app, pod, task(a, "sleep", {"seconds": 0.2}))
        await submit(app, pod, task(b, "sleep", {"seconds": 0.6}))
        assert (await submit(app, pod, task(c, "echo", depends_on=[a, b])))["status"] == "waiting"
        await until(lambda: for_job(completed, c), what="the fan-in task's result")
    views = {job: await task_status(app, job, DONE, pod) for job in (a, b, c)}
    assert {v["status"] for v in views.values()} == {"completed"}
    assert at(views[c]["started_at"]) >= max(at(views[a]["finished_at"]), at(views[b]["finished_at"]))
    assert len(for_job(completed, c)) == 1


async def test_a_failed_dependency_fails_its_dependents_in_cascade(app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    a, b, c, d = (new_job_id(x) for x in "abcd")
    async with collect(nc, "agent.status.failed") as failed:
        await submit(app, pod, task(a, "sleep", {"seconds": 0.3}))
        await submit(app, pod, task(b, "fail", {"code": "boom"}, depends_on=[a]))
        await submit(app, pod, task(c, "echo", depends_on=[b]))
        await submit(app, pod, task(d, "echo", depends_on=[c, a]))
        await until(lambda: for_job(failed, d), what="the cascade's last failure")
    assert for_job(failed, b)[0]["data"]["error"]["code"] == "boom"
    for job, culprit in ((c, b), (d, c)):
        error = for_job(failed, job)[0]["data"]["error"]
        assert error["code"] == "dependency_failed" and f"dependency {culprit!r} ended failed" in error["message"]
        view = await task_status(app, job, {"failed"}, pod)
        assert view["error"]["code"] == "dependency_failed" and view["started_at"] is None
    # A dependency that had already failed fails a newcomer at admission.
    late = new_job_id("late")
    answered = await submit(app, pod, task(late, "echo", depends_on=[b]))
    assert answered["status"] == "failed" and answered["created"]
    assert (await task_status(app, late, {"failed"}, pod))["error"]["message"].startswith(f"dependency {b!r}")


async def test_cycles_are_refused_at_both_doors(app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    a, b = new_job_id("a"), new_job_id("b")
    selfish = await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**task(a, depends_on=[a]), "tenant_id": pod}
    )
    assert selfish.status_code == 422 and selfish.json()["code"] == "dependency_cycle"
    assert (await submit(app, pod, task(a, depends_on=[b])))["status"] == "waiting"
    closing = await app.client.post(
        "/api/v1/tasks", headers=app.auth(), json={**task(b, depends_on=[a]), "tenant_id": pod}
    )
    assert closing.status_code == 422 and closing.headers["content-type"].startswith("application/problem+json")
    assert closing.json()["code"] == "dependency_cycle" and f"{b} -> {a} -> {b}" in closing.json()["detail"]
    assert (await app.client.get(f"/api/v1/tasks/{b}?tenant_id={pod}", headers=app.auth())).status_code == 404

    # Over NATS the refused task is recorded `rejected`, and the task waiting on it fails.
    x, y, z = new_job_id("x"), new_job_id("y"), new_job_id("z")
    js = nc.jetstream()
    async with collect(nc, "agent.status.failed") as failed:
        await js.publish("agent.execute.normal", structured(task(x, tenant_id=pod, depends_on=[z])), headers=app.auth())
        await js.publish("agent.execute.normal", structured(task(y, tenant_id=pod, depends_on=[x])), headers=app.auth())
        await task_status(app, y, {"waiting"}, pod)
        await js.publish("agent.execute.normal", structured(task(z, tenant_id=pod, depends_on=[y])), headers=app.auth())
        await until(lambda: for_job(failed, z) and for_job(failed, x) and for_job(failed, y), what="refusal")
    refused = for_job(failed, z)[0]["data"]
    assert refused["status"] == "rejected" and refused["error"]["code"] == "dependency_cycle"
    assert f"{z} -> {y} -> {x} -> {z}" in refused["error"]["message"]
    assert for_job(failed, x)[0]["data"]["error"]["message"].startswith(f"dependency {z!r} ended rejected")
    assert for_job(failed, y)[0]["data"]["error"]["code"] == "dependency_failed"


async def test_a_dependency_that_never_appears_fails_the_task_after_the_wait(app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    a, never = new_job_id("a"), new_job_id("never")
    done = new_job_id("done")
    await submit(app, pod, task(done))
    await task_status(app, done, {"completed"}, pod)
    async with collect(nc, "agent.status.failed") as failed:
        assert (await submit(app, pod, task(a, depends_on=[done, never])))["status"] == "waiting"
        await until(lambda: for_job(failed, a), timeout=10, what="dependency_missing")
    error = for_job(failed, a)[0]["data"]["error"]
    assert error["code"] == "dependency_missing" and repr(never) in error["message"] and done not in error["message"]
    assert len(for_job(failed, a)) == 1


async def test_a_dependency_submitted_later_is_waited_for(app: RunningApp, nc: Client) -> None:
    """The dependent arrives first over NATS (its message is acked while it waits, and a duplicate
    of it does not run it), the dependency later over HTTP, past the missing-dependency wait: a
    dependency that exists, even unfinished, has no deadline."""
    pod = new_pod()
    a, b = new_job_id("a"), new_job_id("b")
    js = nc.jetstream()
    async with collect(nc, "agent.status.>") as results:
        await js.publish(
            "agent.execute.high",
            structured(task(b, "echo", {"n": 1}, tenant_id=pod, depends_on=[a])),
            headers=app.auth(),
        )
        await task_status(app, b, {"waiting"}, pod)
        await js.publish(
            "agent.execute.high",
            structured(task(b, "echo", {"n": 1}, tenant_id=pod, depends_on=[a])),
            headers=app.auth(),
        )
        await submit(app, pod, task(a, "sleep", {"seconds": 2.5}))
        await task_status(app, a, {"running"}, pod)
        assert (await task_status(app, b, {"waiting"}, pod))["attempts"] == 0
        await until(lambda: app.fabric.consumer.held == 0, what="waiting messages acked")
        view = await task_status(app, b, DONE, pod, timeout=20)
    assert view["status"] == "completed" and view["result"] == {"n": 1} and view["attempts"] == 1
    assert len([e for e in for_job(results, b) if e["type"] == "agent.status.completed"]) == 1


async def test_dependencies_come_before_the_approval_gate(app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await put_policy(app, f"{pod}-gate", [{"action_pattern": "task:echo", "effect": "require_approval"}], pod)
    a, b = new_job_id("a"), new_job_id("b")
    alice, bob = auth_as(app, "alice", "pod_admin", pod), auth_as(app, "bob", "pod_admin", pod)
    await submit(app, pod, task(a, "sleep", {"seconds": 0.3}))
    waiting = await app.client.post("/api/v1/tasks", headers=alice, json={**task(b, depends_on=[a]), "tenant_id": pod})
    assert waiting.json()["status"] == "waiting" and "approval" not in waiting.json()
    async with collect(nc, "agent.approvals.requested") as requested:
        await task_status(app, b, {"awaiting_approval"}, pod)
        await until(lambda: requested, what="approval request once released")
    approval = requested[0]["data"]["approval_id"]
    assert (await app.client.post(f"/api/v1/approvals/{approval}/approve", headers=bob)).status_code == 200
    assert (await task_status(app, b, DONE, pod))["status"] == "completed"


async def test_cancelling_a_dependency_fails_its_dependents_and_a_waiting_task_can_be_cancelled(
    app: RunningApp, nc: Client
) -> None:
    pod = new_pod()
    a, b, c = new_job_id("a"), new_job_id("b"), new_job_id("c")
    await submit(app, pod, task(a, "sleep", {"seconds": 5}))
    await submit(app, pod, task(b, depends_on=[a]))
    await submit(app, pod, task(c, depends_on=[a]))
    await task_status(app, a, {"running"}, pod)
    url = "/api/v1/tasks/{}/cancel?tenant_id=" + pod
    assert (await app.client.post(url.format(c), headers=app.auth(), json={"reason": "not needed"})).is_success
    assert (await task_status(app, c, {"cancelled"}, pod))["started_at"] is None
    async with collect(nc, "agent.status.failed") as failed:
        assert (await app.client.post(url.format(a), headers=app.auth(), json={"reason": "stop"})).is_success
        await until(lambda: for_job(failed, b), what="the dependent's failure")
    error = for_job(failed, b)[0]["data"]["error"]
    assert error["code"] == "dependency_failed" and error["message"].startswith(f"dependency {a!r} ended cancelled")
    assert not for_job(failed, c)

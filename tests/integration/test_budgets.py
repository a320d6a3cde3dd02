"""Budgets: hard limits in LIVE, tracking in SANDBOX, alerts once per period, reports and rollover."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client
from sqlalchemy import update

from agent_fabric.storage.tables import budgets
from tests.conftest import RunningApp, new_job_id
from tests.support.flows import (
    audit,
    auth_as,
    collect,
    for_job,
    new_pod,
    structured,
    task,
    task_status,
    until,
)


def spend(job: str, cost: float, estimate: float = 1.0, seconds: float = 0.0, **extra: Any) -> dict[str, Any]:
    work = {"cost_usd": cost, "tokens": 10, "seconds": seconds}
    return task(job, "spend", work, metadata={"estimate_cost_usd": str(estimate)}, **extra)


async def set_mode(app: RunningApp, pod: str, mode: str, **budget: Any) -> None:
    body: dict[str, Any] = {"mode": mode}
    if budget:
        body["budget"] = budget
    response = await app.client.put(f"/api/v1/config/{pod}", headers=app.auth(), json=body)
    assert response.status_code == 200, response.text


async def folded(app: RunningApp) -> None:
    """Wait until settled usage reached the budget rows (the fold runs every 250 ms)."""
    await asyncio.sleep(0.05)
    await app.fabric.governance.budgets.fold()


async def test_live_tenant_is_refused_past_its_hard_limit(fabric_app: RunningApp) -> None:
    pod = new_pod()
    await set_mode(fabric_app, pod, "LIVE", max_cost_usd=3.0, period="daily")
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    codes = []
    for i in range(5):
        # The admitted ones hold their reservation for a while, so none settles before the fifth.
        response = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend(f"sp-{i}", 0.5, seconds=2))
        codes.append(response.status_code)
    assert codes == [202, 202, 202, 402, 402]
    refusal = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert refusal["code"] == "budget_exceeded" and refusal["entity"] == "tenant" and refusal["dimension"] == "cost_usd"
    # Usage settles below the estimates, the reservations are released: room again.
    for i in range(3):
        await task_status(fabric_app, f"sp-{i}", {"completed"}, pod)
    await folded(fabric_app)
    report = (await fabric_app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=alice)).json()
    assert report["used"]["cost_usd"] == 1.5 and report["reserved"]["cost_usd"] == 0.0
    assert report["used"]["tokens"] == 30 and report["enforced"] and report["mode"] == "LIVE"
    assert report["remaining"]["cost_usd"] == 1.5 and report["projected"]["cost_usd"] >= 1.5
    assert (await fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend("sp-9", 0.5))).status_code == 202
    over = await audit(fabric_app, action="budget.over_limit", tenant_id=pod)
    assert len(over) == 2 and all(e["response"]["enforced"] for e in over) and over[0]["mode"] == "LIVE"


async def test_sandbox_tracks_without_enforcing(fabric_app: RunningApp) -> None:
    pod = new_pod()
    await set_mode(fabric_app, pod, "SANDBOX", max_cost_usd=1.0)
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    for i in range(3):
        response = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend(f"sb-{i}", 1.0))
        assert response.status_code == 202
    for i in range(3):
        await task_status(fabric_app, f"sb-{i}", {"completed"}, pod)
    await folded(fabric_app)
    report = (await fabric_app.client.get(f"/api/v1/budgets/tenant/usage?tenant_id={pod}", headers=alice)).json()
    assert report["used"]["cost_usd"] == 3.0 and report["usage_ratio"] == 3.0 and not report["enforced"]
    over = await audit(fabric_app, action="budget.over_limit", tenant_id=pod)
    assert over and not any(e["response"]["enforced"] for e in over)
    # Every task is tracked per agent and per user too, configured or not.
    agent = (await fabric_app.client.get(f"/api/v1/budgets/agent:builtin?tenant_id={pod}", headers=alice)).json()
    user = (await fabric_app.client.get(f"/api/v1/budgets/user:alice?tenant_id={pod}", headers=alice)).json()
    assert agent["used"]["cost_usd"] == 3.0 and user["used"]["cost_usd"] == 3.0 and user["limits"]["cost_usd"] is None
    listed = (await fabric_app.client.get(f"/api/v1/budgets?tenant_id={pod}", headers=alice)).json()["items"]
    assert {b["entity"] for b in listed} == {"tenant", "agent:builtin", "user:alice"}


async def test_nats_door_refuses_with_a_failure_event(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await set_mode(fabric_app, pod, "LIVE")
    put = await fabric_app.client.put(
        f"/api/v1/budgets/user:svc?tenant_id={pod}", headers=fabric_app.auth(), json={"max_tokens": 0}
    )
    assert put.status_code == 200 and put.json()["limits"]["tokens"] == 0
    job = new_job_id("nats-budget")
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish(
            "agent.execute.normal",
            structured(task(job, tenant_id=pod, metadata={"user": "svc"})),
            headers=fabric_app.auth("agent", pod),
        )
        await until(lambda: for_job(failed, job), what="budget refusal")
    error = for_job(failed, job)[0]["data"]["error"]
    assert error["code"] == "budget_exceeded" and "user:svc" in error["message"]


async def test_alerts_fire_once_per_threshold_per_period(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await set_mode(fabric_app, pod, "SANDBOX", max_cost_usd=10.0, alert_threshold_percent=60)
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    async with collect(nc, "agent.alerts.budget") as alerts:
        jobs = [f"al-{i}" for i in range(14)]
        responses = await asyncio.gather(
            *(fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend(j, 1.0)) for j in jobs)
        )
        assert all(r.status_code == 202 for r in responses)
        for j in jobs:
            await task_status(fabric_app, j, {"completed"}, pod)
        await folded(fabric_app)
        await until(lambda: len([a for a in alerts if a["data"]["tenant_id"] == pod]) >= 5, what="alerts")
        await asyncio.sleep(0.5)
    mine = [a for a in alerts if a["data"]["tenant_id"] == pod and a["data"]["entity"] == "tenant"]
    assert sorted(a["data"]["threshold_percent"] for a in mine) == [50, 60, 75, 90, 100]
    assert {a["data"]["level"] for a in mine} == {"warning", "exceeded"}
    entries = await audit(fabric_app, action="budget.", tenant_id=pod)
    warnings = [e for e in entries if e["action"] in ("budget.warning", "budget.exceeded")]
    assert sorted(e["request"]["threshold_percent"] for e in warnings) == [50, 60, 75, 90, 100]
    v2 = await fabric_app.client.get("/api/v2/agent/budget", headers=alice)
    assert v2.json()["alerts"] == {"50": True, "75": True, "90": True} and v2.headers["x-fabric-mode"] == "SANDBOX"


async def test_rollover_closes_the_period_and_reports_it(fabric_app: RunningApp) -> None:
    pod = new_pod()
    await set_mode(fabric_app, pod, "LIVE", max_cost_usd=5.0, period="daily", carryover=True)
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    assert (await fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend("ro-1", 2.0))).status_code == 202
    await task_status(fabric_app, "ro-1", {"completed"}, pod)
    await folded(fabric_app)
    # Move the budget's period back two days, as if the clock had run on.
    two_days_ago = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    async with fabric_app.fabric.engine.begin() as conn:
        await conn.execute(
            update(budgets)
            .where(budgets.c.tenant_id == pod, budgets.c.entity == "tenant")
            .values(period_start=two_days_ago)
        )
    assert (await fabric_app.client.post("/api/v1/tasks", headers=alice, json=spend("ro-2", 1.0))).status_code == 202
    await task_status(fabric_app, "ro-2", {"completed"}, pod)
    await folded(fabric_app)
    current = (await fabric_app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=alice)).json()
    assert current["used"]["cost_usd"] == 1.0 and current["carried"]["cost_usd"] == 3.0
    assert current["effective_limits"]["cost_usd"] == 8.0
    closed = (
        await fabric_app.client.get(
            f"/api/v1/budgets/tenant/usage?tenant_id={pod}&period={two_days_ago.date().isoformat()}", headers=alice
        )
    ).json()
    assert closed["closed"] and closed["used"]["cost_usd"] == 2.0 and closed["usage_ratio"] == 0.4
    previous = (
        await fabric_app.client.get(f"/api/v1/budgets/tenant/usage?tenant_id={pod}&period=previous", headers=alice)
    ).json()
    assert previous["found"] is False  # yesterday had no activity
    bad = await fabric_app.client.get(f"/api/v1/budgets/tenant/usage?tenant_id={pod}&period=soon", headers=alice)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_period"


async def test_v2_budget_is_pod_admin_only_and_patchable(fabric_app: RunningApp) -> None:
    pod = new_pod()
    pod_admin = auth_as(fabric_app, "alice", "pod_admin", pod)
    patched = await fabric_app.client.patch(
        "/api/v2/agent/budget", headers=pod_admin, json={"limit_usd": 25, "reset_period": "weekly"}
    )
    assert patched.status_code == 200 and patched.headers["x-fabric-mode"] == "SANDBOX"
    body = patched.json()
    assert (body["limit_usd"], body["reset_period"], body["mode"], body["pod_id"]) == (25.0, "weekly", "SANDBOX", pod)
    again = await fabric_app.client.patch("/api/v2/agent/budget", headers=pod_admin, json={"carryover": True})
    assert again.json()["limit_usd"] == 25.0 and again.json()["carryover"] is True
    for role in ("agent", "viewer"):
        denied = await fabric_app.client.get("/api/v2/agent/budget", headers=auth_as(fabric_app, "x", role, pod))
        assert denied.status_code == 403
    admin_needs_tenant = await fabric_app.client.get("/api/v2/agent/budget", headers=fabric_app.auth())
    assert admin_needs_tenant.status_code == 422 and admin_needs_tenant.json()["code"] == "tenant_required"
    bad = await fabric_app.client.patch("/api/v2/agent/budget", headers=pod_admin, json={"limit_usd": -1})
    assert bad.status_code == 422
    bad_entity = await fabric_app.client.get(f"/api/v1/budgets/robot:x?tenant_id={pod}", headers=pod_admin)
    assert bad_entity.status_code == 422 and bad_entity.json()["code"] == "invalid_entity"

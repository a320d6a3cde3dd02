"""Approval gates: tasks park in awaiting_approval, named approvers decide, approvals expire."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client

from agent_fabric.admission.policy_model import Action, PolicyContext
from tests.conftest import RunningApp, new_job_id
from tests.support.flows import (
    audit,
    auth_as,
    collect,
    for_job,
    new_pod,
    put_policy,
    structured,
    task,
    task_status,
    until,
)


async def gated(app: RunningApp, pod: str, **rule: Any) -> None:
    await put_policy(
        app,
        f"{pod}-gate",
        [{"action_pattern": "task:echo", "effect": "require_approval", "approvers": ["bob", "role:admin"], **rule}],
        pod,
    )


async def test_http_task_waits_for_a_named_approver_then_runs(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await gated(fabric_app, pod)
    c = fabric_app.client
    alice, bob = auth_as(fabric_app, "alice", "pod_admin", pod), auth_as(fabric_app, "bob", "pod_admin", pod)
    carol = auth_as(fabric_app, "carol", "pod_admin", pod)
    job = new_job_id("gated")
    async with collect(nc, "agent.approvals.>") as announced, collect(nc, "agent.status.completed") as completed:
        submitted = await c.post("/api/v1/tasks", headers=alice, json=task(job, "echo", {"x": 1}))
        assert submitted.status_code == 202 and submitted.json()["status"] == "awaiting_approval"
        approval_id = submitted.json()["approval"]["id"]
        await until(lambda: announced, what="approval request event")
        requested = announced[0]
        assert (
            requested["type"] == "agent.approvals.requested" and requested["id"] == f"approval/{approval_id}/requested"
        )
        assert requested["data"]["job_id"] == job and requested["data"]["approvers"] == ["bob", "role:admin"]
        assert (await task_status(fabric_app, job, {"awaiting_approval"}, pod))["status"] == "awaiting_approval"
        again = await c.post("/api/v1/tasks", headers=alice, json=task(job, "echo", {"x": 1}))
        assert again.json()["status"] == "awaiting_approval" and not again.json()["created"]

        pending = (await c.get(f"/api/v1/approvals?status=pending&tenant_id={pod}", headers=bob)).json()["items"]
        assert [a["id"] for a in pending] == [approval_id]
        not_named = await c.post(f"/api/v1/approvals/{approval_id}/approve", headers=carol)
        assert not_named.status_code == 403 and not_named.json()["code"] == "not_an_approver"
        own = await c.post(
            f"/api/v1/approvals/{approval_id}/approve", headers=auth_as(fabric_app, "alice", "admin", None)
        )
        assert own.status_code == 403 and own.json()["code"] == "self_approval"
        viewer = auth_as(fabric_app, "bob", "viewer", pod)
        assert (await c.post(f"/api/v1/approvals/{approval_id}/approve", headers=viewer)).status_code == 403

        approved = await c.post(f"/api/v1/approvals/{approval_id}/approve", headers=bob, json={"reason": "fine"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved"
        assert approved.json()["decided_by"] == "bob"
        await until(lambda: for_job(completed, job), what="result event")
        twice = await c.post(f"/api/v1/approvals/{approval_id}/reject", headers=bob, json={"reason": "late"})
        assert twice.status_code == 409 and twice.json()["code"] == "approval_not_pending"
        await until(lambda: len(announced) >= 2, what="decision event")
    assert for_job(completed, job)[0]["data"]["result"] == {"x": 1}
    assert announced[1]["type"] == "agent.approvals.decided" and announced[1]["data"]["status"] == "approved"
    events = (await c.get(f"/api/v1/tasks/{job}?tenant_id={pod}", headers=alice)).json()
    assert events["status"] == "completed"
    trail = await audit(fabric_app, action="approval.", tenant_id=pod)
    assert {(e["action"], e["actor"]) for e in trail} == {("approval.requested", "alice"), ("approval.approved", "bob")}


async def test_rejection_needs_a_reason_and_fails_the_task(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await gated(fabric_app, pod)
    c = fabric_app.client
    alice, bob = auth_as(fabric_app, "alice", "pod_admin", pod), auth_as(fabric_app, "bob", "pod_admin", pod)
    job = new_job_id("reject")
    approval_id = (await c.post("/api/v1/tasks", headers=alice, json=task(job))).json()["approval"]["id"]
    no_reason = await c.post(f"/api/v1/approvals/{approval_id}/reject", headers=bob, json={"reason": "  "})
    assert no_reason.status_code == 422 and no_reason.json()["code"] == "reason_required"
    missing_body = await c.post(f"/api/v1/approvals/{approval_id}/reject", headers=bob)
    assert missing_body.status_code == 422
    async with collect(nc, "agent.status.failed") as failed:
        rejected = await c.post(f"/api/v1/approvals/{approval_id}/reject", headers=bob, json={"reason": "too big"})
        assert rejected.status_code == 200 and rejected.json()["reason"] == "too big"
        await until(lambda: for_job(failed, job), what="failure event")
    data = for_job(failed, job)[0]["data"]
    assert (
        data["status"] == "rejected" and data["error"]["code"] == "rejected" and "too big" in data["error"]["message"]
    )
    record = (await c.get(f"/api/v1/tasks/{job}?tenant_id={pod}", headers=alice)).json()
    assert record["status"] == "rejected" and record["error"]["code"] == "rejected"
    foreign = auth_as(fabric_app, "bob", "pod_admin", new_pod())
    assert (await c.get(f"/api/v1/approvals/{approval_id}", headers=foreign)).status_code == 404


async def test_an_undecided_approval_expires_and_fails_the_task(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await gated(fabric_app, pod, approval_ttl_seconds=0.5)
    job = new_job_id("expire")
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    async with collect(nc, "agent.status.failed") as failed, collect(nc, "agent.approvals.decided") as decided:
        response = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=task(job))
        approval_id = response.json()["approval"]["id"]
        await until(lambda: for_job(failed, job), timeout=10, what="expiry")
        await until(lambda: decided, what="expiry event")
    assert for_job(failed, job)[0]["data"]["error"]["code"] == "approval_expired"
    assert decided[0]["data"]["status"] == "expired"
    late = await fabric_app.client.post(
        f"/api/v1/approvals/{approval_id}/approve", headers=auth_as(fabric_app, "bob", "pod_admin", pod)
    )
    assert late.status_code == 409
    trail = await audit(fabric_app, action="approval.expired", tenant_id=pod)
    assert len(trail) == 1 and trail[0]["actor"] == "system"


async def test_nats_task_parks_and_runs_once_approved(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await gated(fabric_app, pod)
    job = new_job_id("nats-gate")
    async with collect(nc, "agent.approvals.requested") as requested, collect(nc, "agent.status.completed") as done:
        await nc.jetstream().publish(
            "agent.execute.high",
            structured(task(job, tenant_id=pod, metadata={"user": "svc"})),
            headers=auth_as(fabric_app, "svc", "agent", pod),
        )
        await until(lambda: requested, what="approval request")
        approval_id = requested[0]["data"]["approval_id"]
        assert requested[0]["data"]["requested_by"] == "svc"
        # The parked message was acked: nothing is held or redelivered while it waits.
        await asyncio.sleep(0.3)
        assert fabric_app.fabric.consumer.held == 0
        bob = auth_as(fabric_app, "bob", "pod_admin", pod)
        assert (
            await fabric_app.client.post(f"/api/v1/approvals/{approval_id}/approve", headers=bob)
        ).status_code == 200
        await until(lambda: for_job(done, job), what="result")
    assert len(for_job(done, job)) == 1


async def test_any_action_can_ask_for_approval_and_wait(fabric_app: RunningApp) -> None:
    pod = new_pod()
    agent = auth_as(fabric_app, "bot", "agent", pod)
    asked = await fabric_app.client.post(
        "/api/v1/approvals",
        headers=agent,
        json={"action": "shell:rm -rf /data", "approvers": ["bob"], "ttl_seconds": 60},
    )
    assert asked.status_code == 201 and asked.json()["status"] == "pending" and asked.json()["job_id"] is None
    cannot = await fabric_app.client.post(f"/api/v1/approvals/{asked.json()['id']}/approve", headers=agent)
    assert cannot.status_code == 403

    policies = fabric_app.fabric.governance.policies
    ctx = PolicyContext(tenant_id=pod, user="bot")
    waiting = asyncio.create_task(
        policies.require_approval(Action.parse("tool:deploy"), ctx, ["bob"], ttl_seconds=30, wait_seconds=10)
    )
    approvals = fabric_app.fabric.governance.approvals
    async with asyncio.timeout(5):
        while True:
            pending = await approvals.reader.list(tenant_id=pod, status="pending", limit=10, offset=0)
            tool = [a for a in pending if a.action == "tool:deploy"]
            if tool:
                break
            await asyncio.sleep(0.05)
    bob = auth_as(fabric_app, "bob", "pod_admin", pod)
    assert (await fabric_app.client.post(f"/api/v1/approvals/{tool[0].id}/approve", headers=bob)).status_code == 200
    result = await waiting
    assert result.approved and result.decided_by == "bob" and result.status == "approved"


async def test_an_approved_task_past_its_budget_fails_instead_of_waiting(fabric_app: RunningApp, nc: Client) -> None:
    """Approval first, budget second: an approved task that no longer fits is rejected with
    budget_exceeded, never left queued."""
    pod = new_pod()
    await gated(fabric_app, pod)
    config = {"mode": "LIVE", "budget": {"max_cost_usd": 0}}
    assert (await fabric_app.client.put(f"/api/v1/config/{pod}", headers=fabric_app.auth(), json=config)).is_success
    job = new_job_id("approved-broke")
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    parked = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=task(job))
    assert parked.json()["status"] == "awaiting_approval"
    async with collect(nc, "agent.status.failed") as failed:
        approval = parked.json()["approval"]["id"]
        bob = auth_as(fabric_app, "bob", "pod_admin", pod)
        assert (await fabric_app.client.post(f"/api/v1/approvals/{approval}/approve", headers=bob)).status_code == 200
        await until(lambda: for_job(failed, job), what="budget refusal")
    assert for_job(failed, job)[0]["data"]["error"]["code"] == "budget_exceeded"
    assert (await task_status(fabric_app, job, {"rejected"}, pod))["error"]["code"] == "budget_exceeded"

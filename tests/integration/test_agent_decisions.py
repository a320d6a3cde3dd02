"""High-impact approvals by default, decision records and their overrides, /api/v2/agent/tasks.

Tasks run on the agent-zero runtime against the stand-in (tests/support/agent_zero_standin.py),
over real NATS and SQLite or Postgres + Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from tests.conftest import RunningApp, new_job_id
from tests.support.agent_zero_standin import AgentZeroStandIn
from tests.support.flows import auth_as, new_pod, put_policy, structured

KEY = "standin-key-0123456789"
V2 = "/api/v2/agent"


@pytest.fixture
def app(fleet_app: RunningApp) -> RunningApp:
    """The fabric in front of the stand-in (tests/integration/conftest.py)."""
    return fleet_app


def gpu_task(
    job: str, kind: str, inp: dict[str, Any] | None = None, message: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A v2 task: no agent_definition, so the agent-zero runtime and the type's profile."""
    body: dict[str, Any] = {"type": kind, "input": inp if inp is not None else {"gpu": "H100"}}
    if message is not None:
        body["message"] = message
    return {"job_id": job, "task": body, **extra}


class Pod:
    """One POD and three of its people: alice and bob administer it, vic only views it."""

    def __init__(self, app: RunningApp) -> None:
        self.id = new_pod()
        self.client = app.client
        self.alice = auth_as(app, "alice", "pod_admin", self.id)
        self.bob = auth_as(app, "bob", "pod_admin", self.id)
        self.vic = auth_as(app, "vic", "viewer", self.id)

    async def submit(self, body: dict[str, Any], who: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.client.post(f"{V2}/tasks", headers=who or self.alice, json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def get(self, path: str, who: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        return await self.client.get(f"{V2}{path}", headers=who or self.alice, params=params)

    async def post(self, path: str, body: Any = None, who: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(f"{V2}{path}", headers=who or self.bob, json=body)

    async def task(self, job: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                response = await self.get(f"/tasks/{job}")
                if response.status_code == 200 and response.json()["status"] in statuses:
                    return dict(response.json())
                await asyncio.sleep(0.05)

    async def decision(self, decision_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                response = await self.get(f"/decisions/{decision_id}")
                assert response.status_code == 200, response.text
                if response.json()["status"] in statuses:
                    return dict(response.json())
                await asyncio.sleep(0.05)


async def audit_of(app: RunningApp, pod: Pod, action: str) -> list[dict[str, Any]]:
    await app.fabric.governance.audit.flush()
    response = await pod.get("/audit", action=action)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_deploy_terminate_scale_park_by_default_find_runs(
    app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    pod = Pod(app)
    parked = {}
    for kind in ("DEPLOY_GPU", "TERMINATE_GPU", "SCALE_GPU"):
        job = new_job_id(kind.lower())
        response = await pod.client.post(f"{V2}/tasks", headers=pod.alice, json=gpu_task(job, kind))
        assert response.status_code == 202, response.text
        assert response.headers["x-fabric-mode"] == "SANDBOX" and response.json()["mode"] == "SANDBOX"
        body = response.json()
        assert body["status"] == "awaiting_approval" and body["created"] and body["runtime"] == "agent-zero"
        assert body["approval"]["status"] == "pending" and body["approval"]["requested_by"] == "alice"
        assert body["decision"]["status"] == "proposed"
        assert response.headers["location"] == f"{V2}/tasks/{job}?tenant_id={pod.id}"
        parked[kind] = body["decision"]["id"]
    listed = await pod.get("/decisions", status="proposed")
    assert listed.status_code == 200 and listed.headers["x-fabric-mode"] == "SANDBOX"
    assert {d["kind"]: d["id"] for d in listed.json()["items"]} == {f"task:{k}": v for k, v in parked.items()}
    check = await app.client.post(
        "/api/v1/policies/check", headers=pod.alice, json={"action": "task:DEPLOY_GPU", "context": {}}
    )
    assert check.json()["effect"] == "require_approval" and check.json()["policy_id"] == "builtin:high-impact"

    find = new_job_id("find")
    submitted = await pod.submit(gpu_task(find, "FIND_GPU", {"max_price": 2}))
    assert submitted["approval"] is None and submitted["decision"] is None
    done = await pod.task(find, {"completed", "failed"})
    assert done["status"] == "completed", done
    profiles = {ctx.profile for ctx in standin[1].contexts.values()}
    assert profiles == {"gpubroker-provider"}  # routed by task type; nothing parked has run
    assert (await pod.get("/decisions")).json()["items"][0]["kind"] == "task:SCALE_GPU"  # newest first


async def test_an_explicit_pod_rule_overrides_the_default_gate(app: RunningApp) -> None:
    pod = Pod(app)
    await put_policy(app, f"{pod.id}-deploy", [{"action_pattern": "task:DEPLOY_GPU", "effect": "allow"}], pod.id)
    job = new_job_id("deploy")
    submitted = await pod.submit(gpu_task(job, "DEPLOY_GPU"))
    assert submitted["approval"] is None and submitted["decision"] is None
    assert (await pod.task(job, {"completed", "failed"}))["status"] == "completed"
    still = await pod.submit(gpu_task(new_job_id("scale"), "SCALE_GPU"))  # the rule names DEPLOY_GPU only
    assert still["status"] == "awaiting_approval"
    assert (await pod.get("/decisions")).json()["items"][0]["kind"] == "task:SCALE_GPU"


async def test_deploy_proposed_overridden_by_another_admin_runs_and_is_executed(
    app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    pod = Pod(app)
    job = new_job_id("deploy")
    submitted = await pod.submit(gpu_task(job, "DEPLOY_GPU", {"gpu": "H100", "count": 2}, priority="high"))
    decision_id = submitted["decision"]["id"]
    proposed = (await pod.get(f"/decisions/{decision_id}")).json()
    assert proposed["status"] == "proposed" and proposed["kind"] == "task:DEPLOY_GPU" and proposed["subject"] == job
    assert proposed["proposed_by"] == "alice" and proposed["override"] is None and proposed["mode"] == "SANDBOX"
    detail = proposed["detail"]
    assert detail["task"] == {"type": "DEPLOY_GPU", "input": {"gpu": "H100", "count": 2}, "has_message": False}
    assert detail["policy"]["policy_id"] == "builtin:high-impact" and "high-impact" in detail["policy"]["reason"]
    assert detail["requested_by"] == "alice" and detail["priority"] == "high"
    assert proposed["approval"]["status"] == "pending" and proposed["approval_id"] == submitted["approval"]["id"]

    override = f"/decisions/{decision_id}/override"
    missing = await pod.post(override, {"decision": "approve"})
    assert missing.status_code == 422 and missing.json()["code"] == "invalid_request"
    blank = await pod.post(override, {"decision": "approve", "notes": "   "})
    assert blank.status_code == 422 and blank.json()["code"] == "notes_required"
    odd = await pod.post(override, {"decision": "maybe", "notes": "hm"})
    assert odd.status_code == 422
    own = await pod.post(override, {"decision": "approve", "notes": "mine"}, who=pod.alice)
    assert own.status_code == 403 and own.json()["code"] == "self_approval"
    viewer = await pod.post(override, {"decision": "approve", "notes": "x"}, who=pod.vic)
    assert viewer.status_code == 403
    assert (await pod.get(f"/decisions/{decision_id}")).json()["status"] == "proposed"

    approved = await pod.post(override, {"decision": "approve", "notes": "capacity confirmed with finance"})
    assert approved.status_code == 200, approved.text
    assert approved.headers["x-fabric-mode"] == "SANDBOX" and approved.json()["mode"] == "SANDBOX"
    body = approved.json()
    assert body["status"] == "approved" and body["override"]["by"] == "bob"
    assert body["override"]["notes"] == "capacity confirmed with finance" and body["override"]["at"]
    assert body["approval"]["decided_by"] == "bob" and body["approval"]["reason"] == "capacity confirmed with finance"

    done = await pod.task(job, {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["result"]["response"].startswith("Done: Task type: DEPLOY_GPU")
    profiles = [ctx.profile for ctx in standin[1].contexts.values()]
    assert profiles == ["gpubroker-provisioner"]
    executed = await pod.decision(decision_id, {"executed"})
    assert executed["detail"]["outcome"]["status"] == "completed" and executed["detail"]["outcome"]["error"] is None
    assert executed["override"]["by"] == "bob"

    twice = await pod.post(override, {"decision": "reject", "notes": "too late"})
    assert twice.status_code == 409 and twice.json()["code"] == "decision_not_pending"
    trail = await audit_of(app, pod, "decision.override")
    assert len(trail) == 1 and trail[0]["actor"] == "bob" and trail[0]["mode"] == "SANDBOX"
    assert trail[0]["request"] == {
        "decision_id": decision_id,
        "decision": "approve",
        "notes": "capacity confirmed with finance",
    }
    assert trail[0]["response"]["status"] == "approved" and trail[0]["response"]["subject"] == job


async def test_override_reject_ends_the_task_rejected(app: RunningApp) -> None:
    pod = Pod(app)
    job = new_job_id("scale")
    decision_id = (await pod.submit(gpu_task(job, "SCALE_GPU", {"replicas": 40})))["decision"]["id"]
    admin = auth_as(app, "root", "admin", None)
    rejected = await app.client.post(
        f"{V2}/decisions/{decision_id}/override?tenant_id={pod.id}",
        headers=admin,
        json={"decision": "reject", "notes": "forty replicas is not in the plan"},
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected" and rejected.json()["override"]["by"] == "root"
    task = await pod.task(job, {"rejected"})
    assert task["error"]["code"] == "rejected" and "forty replicas" in task["error"]["message"]
    assert task["decision"]["status"] == "rejected"  # the task's end does not rewrite a rejected decision
    again = await pod.post(f"/decisions/{decision_id}/override", {"decision": "approve", "notes": "changed my mind"})
    assert again.status_code == 409
    trail = await audit_of(app, pod, "decision.override")
    assert [(e["actor"], e["request"]["decision"]) for e in trail] == [("root", "reject")]


async def test_failed_run_and_expired_approval_settle_their_decisions(app: RunningApp) -> None:
    pod = Pod(app)
    # A POD rule with a short wait: every task a policy parks is a decision, not only the defaults.
    await put_policy(
        app,
        f"{pod.id}-terminate",
        [{"action_pattern": "task:TERMINATE_GPU", "effect": "require_approval", "approval_ttl_seconds": 0.5}],
        pod.id,
    )
    lapsing = new_job_id("terminate")
    lapsing_decision = (await pod.submit(gpu_task(lapsing, "TERMINATE_GPU")))["decision"]["id"]
    failing = new_job_id("deploy")
    failing_decision = (await pod.submit(gpu_task(failing, "DEPLOY_GPU", message="[fail] deploy it")))["decision"]
    approved = await pod.post(f"/tasks/{failing}/approve", {"reason": "try it"})
    assert approved.status_code == 200 and approved.json()["decision"]["status"] == "approved"

    expired = await pod.decision(lapsing_decision, {"expired"})
    assert expired["detail"]["policy"]["policy_id"] == f"{pod.id}-terminate" and expired["override"] is None
    assert (await pod.task(lapsing, {"rejected"}))["error"]["code"] == "approval_expired"
    failed = await pod.decision(failing_decision["id"], {"failed"})
    assert failed["detail"]["outcome"]["status"] == "failed"
    assert failed["detail"]["outcome"]["error"]["code"] == "agent_error"
    late = await pod.post(f"/decisions/{lapsing_decision}/override", {"decision": "approve", "notes": "sorry, late"})
    assert late.status_code == 409


async def test_v2_tasks_list_get_approve_reject(app: RunningApp) -> None:
    pod = Pod(app)
    first, second, plain = new_job_id("deploy"), new_job_id("terminate"), new_job_id("health")
    await pod.submit(gpu_task(first, "DEPLOY_GPU"))
    await pod.submit(gpu_task(second, "TERMINATE_GPU"))
    await pod.submit(gpu_task(plain, "HEALTH_CHECK"))
    await pod.task(plain, {"completed"})

    waiting = await pod.get("/tasks", status="awaiting_approval")
    assert waiting.status_code == 200 and waiting.headers["x-fabric-mode"] == "SANDBOX"
    assert [t["job_id"] for t in waiting.json()["items"]] == [second, first]
    page = (await pod.get("/tasks", limit=1, offset=1)).json()
    assert [t["job_id"] for t in page["items"]] == [second] and page["limit"] == 1 and page["offset"] == 1
    one = (await pod.get(f"/tasks/{first}")).json()
    assert one["status"] == "awaiting_approval" and one["task"]["type"] == "DEPLOY_GPU" and one["mode"] == "SANDBOX"
    assert one["approval"]["status"] == "pending" and one["decision"]["status"] == "proposed"
    assert (await pod.get("/tasks/nope")).status_code == 404

    own = await pod.post(f"/tasks/{first}/approve", who=pod.alice)
    assert own.status_code == 403 and own.json()["code"] == "self_approval"
    approved = await pod.post(f"/tasks/{first}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["approval"]["decided_by"] == "bob" and approved.json()["decision"]["status"] == "approved"
    assert (await pod.post(f"/tasks/{first}/approve")).status_code == 409
    assert (await pod.task(first, {"completed", "failed"}))["status"] == "completed"

    no_reason = await pod.post(f"/tasks/{second}/reject", {})
    assert no_reason.status_code == 422
    blank = await pod.post(f"/tasks/{second}/reject", {"reason": "  "})
    assert blank.status_code == 422 and blank.json()["code"] == "reason_required"
    rejected = await pod.post(f"/tasks/{second}/reject", {"reason": "not this quarter"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["error"]["code"] == "rejected" and rejected.json()["decision"]["status"] == "rejected"
    assert (await pod.post(f"/tasks/{second}/reject", {"reason": "again"})).status_code == 409

    nothing = await pod.post(f"/tasks/{plain}/approve")
    assert nothing.status_code == 404 and nothing.json()["code"] == "no_approval"
    assert (await pod.post("/tasks/nope/approve")).status_code == 404
    decisions = (await pod.get("/decisions")).json()["items"]
    assert {(d["subject"], d["status"]) for d in decisions} == {(first, "executed"), (second, "rejected")}


async def test_submission_is_checked_and_pods_are_kept_apart(app: RunningApp) -> None:
    pod, other = Pod(app), Pod(app)
    job = new_job_id("deploy")
    decision_id = (await pod.submit(gpu_task(job, "DEPLOY_GPU")))["decision"]["id"]

    assert (await other.get(f"/decisions/{decision_id}")).status_code == 404
    stolen = await other.post(f"/decisions/{decision_id}/override", {"decision": "approve", "notes": "mine now"})
    assert stolen.status_code == 404
    assert (await other.get(f"/tasks/{job}")).status_code == 404
    assert (await other.post(f"/tasks/{job}/approve")).status_code == 404
    assert (await other.get("/decisions")).json()["items"] == []
    crossing = await pod.client.get(f"{V2}/decisions?tenant_id={other.id}", headers=pod.alice)
    assert crossing.status_code == 403
    assert (await pod.get("/decisions", who=pod.vic)).status_code == 403
    assert (await pod.get(f"/decisions/{'0' * 32}")).status_code == 404
    assert (await pod.get("/decisions/not-an-id")).status_code == 422

    elsewhere = await pod.client.post(
        f"{V2}/tasks", headers=pod.alice, json={**gpu_task(new_job_id(), "FIND_GPU"), "tenant_id": other.id}
    )
    assert elsewhere.status_code == 403
    bad = await pod.client.post(f"{V2}/tasks", headers=pod.alice, json={"job_id": "x y", "task": {"type": "FIND_GPU"}})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_task"
    builtin = await pod.submit(
        {**gpu_task(new_job_id("echo"), "echo", {"x": 1}), "agent_definition": {"runtime": "builtin"}}
    )
    assert builtin["runtime"] == "builtin" and builtin["status"] in ("queued", "running", "completed")
    requests = await audit_of(app, pod, "agent_api.request")
    assert any(
        e["request"]["path"] == f"{V2}/decisions/{decision_id}/override"
        for e in await audit_of(app, other, "agent_api.request")
    )
    assert any(e["request"]["path"] == f"{V2}/tasks" and e["actor"] == "alice" for e in requests)


async def test_a_deploy_published_on_nats_is_a_decision_too(app: RunningApp, nc: Client) -> None:
    pod = Pod(app)
    job = new_job_id("deploy")
    data = {**gpu_task(job, "DEPLOY_GPU"), "tenant_id": pod.id, "agent_definition": {"runtime": "agent-zero"}}
    await nc.publish(
        "agent.execute.normal",
        structured({**data, "metadata": {"user": "planner-bot"}}),
        # Who proposed it comes from the credential (issue 15), not from the payload's metadata.user.
        headers={
            "Authorization": f"Bearer {app.fabric.tokens.issue(role='agent', subject='planner-bot', tenant_id=pod.id)}"
        },
    )
    async with asyncio.timeout(15):
        while not (items := (await pod.get("/decisions")).json()["items"]):
            await asyncio.sleep(0.05)
    decision = items[0]
    assert decision["subject"] == job and decision["status"] == "proposed" and decision["proposed_by"] == "planner-bot"
    assert (await pod.get(f"/tasks/{job}")).json()["status"] == "awaiting_approval"
    notes = {"decision": "approve", "notes": "bot proposals need a human; checked"}
    assert (await pod.post(f"/decisions/{decision['id']}/override", notes)).status_code == 200
    assert (await pod.task(job, {"completed", "failed"}))["status"] == "completed"
    assert (await pod.decision(decision["id"], {"executed", "failed"}))["status"] == "executed"


async def test_without_agent_zero_v2_tasks_say_runtime_unavailable(fabric_app: RunningApp) -> None:
    pod = Pod(fabric_app)
    refused = await pod.client.post(f"{V2}/tasks", headers=pod.alice, json=gpu_task(new_job_id(), "DEPLOY_GPU"))
    assert refused.status_code == 422 and refused.json()["code"] == "runtime_unavailable"
    assert (await pod.get("/decisions")).json()["items"] == []
    # A POD rule parks a builtin task the same way: every task put to approvers is a decision.
    await put_policy(
        fabric_app, f"{pod.id}-echo", [{"action_pattern": "task:echo", "effect": "require_approval"}], pod.id
    )
    job = new_job_id("echo")
    parked = await pod.submit({**gpu_task(job, "echo", {"x": 1}), "agent_definition": {"runtime": "builtin"}})
    assert parked["status"] == "awaiting_approval" and parked["decision"]["status"] == "proposed"
    approved = await pod.post(f"/decisions/{parked['decision']['id']}/override", {"decision": "approve", "notes": "ok"})
    assert approved.status_code == 200 and approved.json()["kind"] == "task:echo"
    assert (await pod.task(job, {"completed"}))["result"] == {"x": 1}
    assert (await pod.decision(parked["decision"]["id"], {"executed"}))["override"]["notes"] == "ok"

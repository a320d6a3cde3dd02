"""Policies through the API: versions, validation, tenant isolation, and decisions at both doors."""

from __future__ import annotations

import uuid

from nats.aio.client import Client

from agent_fabric.storage.task_store import spec_hash
from agent_fabric.tasks import TaskSpec
from tests.conftest import RunningApp, new_job_id
from tests.support.flows import audit, auth_as, collect, for_job, new_pod, put_policy, structured, task, until

DENY_FAIL = [{"action_pattern": "task:fail", "effect": "deny"}]


async def test_put_creates_versions_and_history_keeps_them(fabric_app: RunningApp) -> None:
    c, admin, pod = fabric_app.client, fabric_app.auth(), new_pod()
    pid = f"pol-{pod}"
    first = await put_policy(fabric_app, pid, DENY_FAIL, pod, description="v1")
    assert first["version"] == 1
    second = await c.put(
        f"/api/v1/policies/{pid}",
        headers={**admin, "If-Match": "1"},
        json={"scope": {"tenant_id": pod}, "rules": DENY_FAIL, "description": "v2", "priority": 5},
    )
    assert second.status_code == 200 and second.json()["version"] == 2 and second.headers["etag"] == "2"
    stale = await c.put(
        f"/api/v1/policies/{pid}",
        headers={**admin, "If-Match": "1"},
        json={"scope": {"tenant_id": pod}, "rules": []},
    )
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    assert stale.json()["current_version"] == 2
    current = (await c.get(f"/api/v1/policies/{pid}", headers=admin)).json()
    assert current["policy"]["description"] == "v2" and current["policy"]["priority"] == 5
    deleted = await c.delete(f"/api/v1/policies/{pid}", headers=admin)
    assert deleted.status_code == 200 and deleted.json()["deleted"] and deleted.json()["version"] == 3
    assert (await c.get(f"/api/v1/policies/{pid}", headers=admin)).status_code == 404
    history = (await c.get(f"/api/v1/policies/{pid}/versions", headers=admin)).json()["versions"]
    assert [(v["version"], v["deleted"]) for v in history] == [(3, True), (2, False), (1, False)]
    assert history[2]["policy"]["description"] == "v1"
    entries = await audit(fabric_app, action="policy.", tenant_id=pod)
    assert {"policy.updated", "policy.deleted"} <= {e["action"] for e in entries}


async def test_invalid_policies_are_refused_with_every_reason(fabric_app: RunningApp) -> None:
    response = await fabric_app.client.put(
        "/api/v1/policies/bad",
        headers=fabric_app.auth(),
        json={
            "scope": {"tenant_id": "pod-1", "workspace_id": "w", "agent_id": "a"},
            "rules": [{"action_pattern": "rocket:launch", "effect": "maybe"}],
        },
    )
    body = response.json()
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert body["code"] == "invalid_policy"
    locations = {".".join(e["loc"]) for e in body["errors"]}
    assert {"scope", "rules.0.action_pattern", "rules.0.effect"} <= locations
    not_object = await fabric_app.client.put("/api/v1/policies/bad", headers=fabric_app.auth(), json=[1, 2])
    assert not_object.status_code == 422 and not_object.json()["code"] == "invalid_request"
    bad_id = await fabric_app.client.put("/api/v1/policies/has space", headers=fabric_app.auth(), json={})
    assert bad_id.status_code == 422
    assert (await fabric_app.client.get("/api/v1/policies/bad", headers=fabric_app.auth())).status_code == 404


async def test_tenant_bound_roles_stay_in_their_tenant(fabric_app: RunningApp) -> None:
    pod, other_pod = new_pod(), new_pod()
    await put_policy(fabric_app, f"{other_pod}-only", DENY_FAIL, other_pod)
    pod1_admin = auth_as(fabric_app, "alice", "pod_admin", pod)
    other = await fabric_app.client.put(
        f"/api/v1/policies/{pod}-mine", headers=pod1_admin, json={"scope": {"tenant_id": other_pod}, "rules": []}
    )
    assert other.status_code == 403
    takeover = await fabric_app.client.put(
        f"/api/v1/policies/{other_pod}-only", headers=pod1_admin, json={"scope": {"tenant_id": pod}, "rules": []}
    )
    assert takeover.status_code == 403
    assert (await fabric_app.client.get(f"/api/v1/policies/{other_pod}-only", headers=pod1_admin)).status_code == 404
    own = await fabric_app.client.put(
        f"/api/v1/policies/{pod}-mine", headers=pod1_admin, json={"scope": {"tenant_id": pod}, "rules": DENY_FAIL}
    )
    assert own.status_code == 201
    listed = (await fabric_app.client.get("/api/v1/policies", headers=pod1_admin)).json()["items"]
    assert [p["id"] for p in listed] == [f"{pod}-mine"]
    viewer = auth_as(fabric_app, "vic", "viewer", pod)
    assert (await fabric_app.client.get(f"/api/v1/policies/{pod}-mine", headers=viewer)).status_code == 200
    assert (await fabric_app.client.delete(f"/api/v1/policies/{pod}-mine", headers=viewer)).status_code == 403
    denied = await audit(fabric_app, action="access_denied", tenant_id=pod)
    assert any(e["actor"] == "vic" and e["response"]["status"] == 403 for e in denied)


async def test_denied_task_is_403_over_http_and_a_failure_event_over_nats(fabric_app: RunningApp, nc: Client) -> None:
    pod = new_pod()
    await put_policy(fabric_app, f"{pod}-no-fail", DENY_FAIL, pod)
    alice = auth_as(fabric_app, "alice", "pod_admin", pod)
    job = new_job_id("denied")
    response = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=task(job, "fail"))
    assert response.status_code == 403 and response.json()["code"] == "policy_denied"
    assert response.json()["policy_id"] == f"{pod}-no-fail" and "rule 0" in response.json()["detail"]
    missing = await fabric_app.client.get(f"/api/v1/tasks/{job}?tenant_id={pod}", headers=fabric_app.auth())
    assert missing.status_code == 404
    nats_job = new_job_id("denied-nats")
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish(
            "agent.execute.normal", structured(task(nats_job, "fail", tenant_id=pod)), headers=fabric_app.auth()
        )
        await until(lambda: for_job(failed, nats_job), what="failure event")
    data = for_job(failed, nats_job)[0]["data"]
    assert data["status"] == "rejected" and data["error"]["code"] == "policy_denied"
    allowed = await fabric_app.client.post("/api/v1/tasks", headers=alice, json=task(new_job_id()))
    assert allowed.status_code == 202
    metrics = (await fabric_app.client.get("/metrics")).text
    assert 'agent_fabric_policy_decisions_total{decision="deny"} 2.0' in metrics
    decisions = await audit(fabric_app, action="policy.decision", tenant_id=pod)
    doors = {(e["request"]["door"], e["response"]["effect"]) for e in decisions}
    assert {("http", "deny"), ("nats", "deny"), ("http", "allow")} <= doors


async def test_check_answers_for_tools_files_urls_and_commands(fabric_app: RunningApp) -> None:
    pod = new_pod()
    await put_policy(
        fabric_app,
        f"{pod}-lists",
        [
            {"action_pattern": "file:*", "effect": "deny"},
            {"action_pattern": "url:*", "effect": "deny"},
            {"action_pattern": "shell:rm *", "effect": "require_approval", "approvers": ["role:pod_admin"]},
        ],
        pod,
    )
    await put_policy(
        fabric_app,
        f"{pod}-allow-lists",
        [
            {"action_pattern": "file:/workspace/*", "effect": "allow"},
            {"action_pattern": "url:https://*.example.com/*", "effect": "allow"},
        ],
        pod,
        priority=10,
    )
    agent = auth_as(fabric_app, "bot", "agent", pod)

    async def effect(action: str, **context: object) -> str:
        r = await fabric_app.client.post(
            "/api/v1/policies/check", headers=agent, json={"action": action, "context": context}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["effect"])

    assert await effect("file:/workspace/a.txt") == "allow"
    assert await effect("file:/etc/passwd") == "deny"
    assert await effect("url:https://api.example.com/v1") == "allow"
    assert await effect("url:https://evil.test/") == "deny"
    assert await effect("shell:rm -rf /tmp/x") == "require_approval"
    assert await effect("tool:web_search") == "allow"
    foreign = await fabric_app.client.post(
        "/api/v1/policies/check", headers=agent, json={"action": "tool:x", "context": {"tenant_id": new_pod()}}
    )
    assert foreign.status_code == 403
    bad = await fabric_app.client.post("/api/v1/policies/check", headers=agent, json={"action": "rocket:x"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_action"


async def test_a_policy_changed_after_the_http_door_is_applied_at_the_nats_door(
    fabric_app: RunningApp, nc: Client
) -> None:
    """Admission runs again at intake: a task queued over HTTP under the old policy is rejected
    (not left queued forever) when the new policy denies it by the time its message is taken."""
    pod = new_pod()
    job = new_job_id("changed")
    spec = TaskSpec.model_validate(task(job, "fail", tenant_id=pod))
    event_id = uuid.uuid4().hex
    assert (await fabric_app.fabric.queue_store.enqueue(spec, spec_hash(spec), event_id)).inserted
    await put_policy(fabric_app, f"{pod}-late", DENY_FAIL, pod)
    async with collect(nc, "agent.status.failed") as failed:
        await nc.jetstream().publish(
            "agent.execute.normal",
            structured(task(job, "fail", tenant_id=pod), event_id=event_id),
            headers=fabric_app.auth(),
        )
        await until(lambda: for_job(failed, job), what="failure event")
    record = await fabric_app.fabric.store.get(pod, job)
    assert record is not None and record.status.value == "rejected" and record.error_code == "policy_denied"

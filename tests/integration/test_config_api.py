"""Tenant configuration: validated before it applies, versioned with history, live, audited."""

from __future__ import annotations

from tests.conftest import RunningApp
from tests.support.flows import audit, auth_as, new_pod, task


async def test_config_is_validated_versioned_and_applied_live(fabric_app: RunningApp) -> None:
    pod = new_pod()
    c, admin = fabric_app.client, fabric_app.auth()
    empty = (await c.get(f"/api/v1/config/{pod}", headers=admin)).json()
    assert empty["version"] == 0 and empty["mode"] == "SANDBOX" and empty["config"]["agent_zero"]["max_sessions"] == 10
    first = await c.put(
        f"/api/v1/config/{pod}",
        headers=admin,
        json={
            "mode": "LIVE",
            "agent_zero": {"url": "https://a0.example.com", "timeout_seconds": 120, "max_sessions": 3},
            "budget": {"max_cost_usd": 0, "period": "weekly"},
        },
    )
    assert first.status_code == 200 and first.headers["x-fabric-mode"] == "LIVE"
    body = first.json()
    assert body["version"] == 1 and body["mode"] == "LIVE" and body["config"]["agent_zero"]["max_sessions"] == 3
    assert body["budget"]["limits"]["cost_usd"] == 0.0 and body["budget"]["period"] == "weekly"
    # Applied at once: LIVE with a zero budget refuses new work.
    refused = await c.post("/api/v1/tasks", headers=auth_as(fabric_app, "a", "pod_admin", pod), json=task("c-1"))
    assert refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"

    for bad, where in [
        ({"agent_zero": {"url": "not a url"}}, "agent_zero.url"),
        ({"agent_zero": {"timeout_seconds": 0}}, "agent_zero.timeout_seconds"),
        ({"agent_zero": {"max_sessions": 100000}}, "agent_zero.max_sessions"),
        ({"mode": "TURBO"}, "mode"),
        ({"colour": "red"}, "colour"),
        ({"budget": {"period": "hourly"}}, "budget.period"),
    ]:
        response = await c.put(f"/api/v1/config/{pod}", headers=admin, json=bad)
        assert response.status_code == 422 and response.json()["code"] == "invalid_config", bad
        assert where in {".".join(e["loc"]) for e in response.json()["errors"]}
    stale = await c.put(f"/api/v1/config/{pod}", headers={**admin, "If-Match": "0"}, json={"mode": "SANDBOX"})
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    second = await c.put(f"/api/v1/config/{pod}", headers={**admin, "If-Match": "1"}, json={"mode": "SANDBOX"})
    assert second.json()["version"] == 2 and second.json()["mode"] == "SANDBOX"
    accepted = await c.post("/api/v1/tasks", headers=auth_as(fabric_app, "a", "pod_admin", pod), json=task("c-2"))
    assert accepted.status_code == 202  # SANDBOX tracks the same budget without enforcing it

    history = (await c.get(f"/api/v1/config/{pod}/history", headers=admin)).json()["versions"]
    assert [(v["version"], v["body"]["mode"]) for v in history] == [(2, "SANDBOX"), (1, "LIVE")]
    changes = await audit(fabric_app, action="config.updated", tenant_id=pod)
    assert [e["response"]["version"] for e in changes] == [2, 1]


async def test_config_access_follows_roles_and_tenants(fabric_app: RunningApp) -> None:
    pod = new_pod()
    pod_admin = auth_as(fabric_app, "alice", "pod_admin", pod)
    own = await fabric_app.client.put(f"/api/v1/config/{pod}", headers=pod_admin, json={"mode": "LIVE"})
    assert own.status_code == 200
    # A LIVE tenant's Agent Zero surface needs an MFA token (issue 6).
    assert (await fabric_app.client.get("/api/v2/agent/config", headers=pod_admin)).status_code == 403
    mfa = fabric_app.fabric.tokens.issue(role="pod_admin", subject="alice", tenant_id=pod, amr=["mfa"])
    v2 = await fabric_app.client.get("/api/v2/agent/config", headers={"Authorization": f"Bearer {mfa}"})
    assert v2.status_code == 200 and v2.json()["mode"] == "LIVE" and v2.headers["x-fabric-mode"] == "LIVE"
    assert (await fabric_app.client.get(f"/api/v1/config/{new_pod()}", headers=pod_admin)).status_code == 403
    for role in ("agent", "viewer"):
        headers = auth_as(fabric_app, "x", role, pod)
        assert (await fabric_app.client.get(f"/api/v1/config/{pod}", headers=headers)).status_code == 403
        assert (await fabric_app.client.get("/api/v2/agent/config", headers=headers)).status_code == 403

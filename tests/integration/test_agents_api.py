"""/api/v1/agents on real NATS and SQLite/Postgres: discovery, one-time tokens (incl. a race),
credentials that work, configuration with history reaching a NATS subscriber, lifecycle refusals,
tenant isolation of every route, and admission of tasks naming an agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from sqlalchemy import func, select, update

from agent_fabric import names
from agent_fabric.agents.states import AgentStatus
from agent_fabric.errors import InvalidTask
from agent_fabric.settings import AgentsSettings
from agent_fabric.storage.agent_tables import agent_discovery_tokens, agents
from agent_fabric.tasks import TaskBody
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.agent_packages import good_values, write_package
from tests.support.flows import audit, auth_as, collect, new_pod, structured, task, until

PROBLEM = "application/problem+json"


@pytest.fixture
async def agents_app(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> AsyncIterator[RunningApp]:
    packages = tmp_path / "packages"
    packages.mkdir()
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    settings = make_settings(
        tmp_path, nats_url, database_url=db, redis_url=redis, agents=AgentsSettings(dir=str(packages))
    )
    async with running_app(settings) as app:
        yield app


def packages_dir(app: RunningApp) -> Path:
    return app.fabric.agents.discovery.dirs[0]


async def mint(app: RunningApp, pod: str, **extra: Any) -> str:
    response = await app.client.post(
        "/api/v1/agents/discovery-tokens", headers=auth_as(app, "ops", "pod_admin", pod), json=extra
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["tenant_id"] == pod and body["discovery_token"].startswith("afd_")
    return str(body["discovery_token"])


async def register(app: RunningApp, token: str, name: str, version: str = "1.0.0", kind: str = "security") -> Any:
    return await app.client.post(
        "/api/v1/agents",
        json={"agent_name": name, "agent_version": version, "agent_type": kind, "discovery_token": token},
    )


async def registered(app: RunningApp, pod: str, name: str | None = None) -> dict[str, Any]:
    response = await register(app, await mint(app, pod), name or f"Ext-{uuid.uuid4().hex[:8]}")
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def count_named(app: RunningApp, name: str) -> int:
    async with app.fabric.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).where(agents.c.name == name))).scalar_one())


async def test_discovery_registration_and_credentials(agents_app: RunningApp) -> None:
    app, c = agents_app, agents_app.client
    name, pod = f"Sec-{uuid.uuid4().hex[:8]}", new_pod()
    good = write_package(packages_dir(app), "good", **good_values(name))
    write_package(packages_dir(app), "broken", **{**good_values(name + "x"), "AGENT_VERSION": "one"})
    report = (await c.post("/api/v1/agents/discover", headers=app.auth())).json()
    by_path = {p["path"]: p for p in report["packages"]}
    assert by_path[str(good.resolve())]["status"] == "discovered"
    broken = [p for p in report["packages"] if p["status"] == "broken"]
    assert [pr["field"] for pr in broken[0]["problems"]] == ["AGENT_VERSION"] and report["broken"] == 1
    assert (await c.get("/api/v1/agents/discover", headers=app.auth())).json()["broken"] == 1
    refused = await c.post("/api/v1/agents/discover", headers=auth_as(app, "p", "pod_admin", pod))
    assert refused.status_code == 403

    listed = (await c.get("/api/v1/agents", headers=app.auth(), params={"status": "discovered"})).json()
    discovered = [a for a in listed["items"] if a["name"] == name]
    assert len(discovered) == 1 and discovered[0]["command"] == "./run.sh --once"
    agent_id = discovered[0]["agent_id"]

    token = await mint(app, pod, note="for the security agent")
    forged = await register(app, "afd_" + "x" * 43, name)
    assert forged.status_code == 401 and forged.headers["content-type"] == PROBLEM
    done = await register(app, token, name)
    assert done.status_code == 201, done.text
    body = done.json()
    assert body["agent"]["agent_id"] == agent_id  # the package's catalogue row moved on
    assert body["agent"]["status"] == "registered" and body["agent"]["tenant_id"] == pod
    assert body["agent"]["package_path"] == str(good.resolve())
    again = await register(app, token, name)
    assert again.status_code == 401 and again.json()["code"] == "unauthenticated"
    assert await count_named(app, name) == 1  # nothing registered by the refused uses

    creds = body["credentials"]
    own = await c.get(f"/api/v1/agents/{agent_id}", headers=bearer(creds["access_token"]))
    assert own.status_code == 200 and [h["to"] for h in own.json()["history"]] == ["discovered", "registered"]
    exchanged = await c.post("/api/v1/auth/token", json={"api_key": creds["api_key"]})
    assert exchanged.status_code == 200
    via_key = bearer(exchanged.json()["access_token"])
    assert (await c.get(f"/api/v1/agents/{agent_id}/config", headers=via_key)).status_code == 200
    listed_own = (await c.get("/api/v1/agents", headers=via_key)).json()
    assert [a["agent_id"] for a in listed_own["items"]] == [agent_id]
    assert body["nats"]["available"] is False  # an external NATS server: credentials come from its operator
    assert names.agent_namespace(agent_id) in body["nats"]["permissions"]["publish"]

    entries = await audit(app, tenant_id=pod)
    assert {"agent.registered", "agent.discovery_token_created"} <= {e["action"] for e in entries}
    tokens = (await c.get("/api/v1/agents/discovery-tokens", headers=auth_as(app, "p", "pod_admin", pod))).json()
    assert tokens["items"][0]["used_by_agent"] == agent_id and "discovery_token" not in tokens["items"][0]

    # The catalogue offers the package again at the next scan, for another registration.
    await c.post("/api/v1/agents/discover", headers=app.auth())
    assert await count_named(app, name) == 2


async def test_expired_token_is_refused(agents_app: RunningApp) -> None:
    app, pod = agents_app, new_pod()
    token = await mint(app, pod, ttl_seconds=30)
    async with app.fabric.engine.begin() as conn:
        await conn.execute(
            update(agent_discovery_tokens)
            .where(agent_discovery_tokens.c.tenant_id == pod)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    name = f"Late-{uuid.uuid4().hex[:8]}"
    response = await register(app, token, name)
    assert response.status_code == 401 and await count_named(app, name) == 0


async def test_two_racing_registrations_with_one_token_exactly_one_wins(agents_app: RunningApp) -> None:
    app, pod = agents_app, new_pod()
    name = f"Race-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        token = await mint(app, pod)
        first, second = await asyncio.gather(register(app, token, name), register(app, token, name))
        assert sorted([first.status_code, second.status_code]) == [201, 401]
    assert await count_named(app, name) == 3


async def test_direct_registration_by_operators(agents_app: RunningApp) -> None:
    app, c, pod = agents_app, agents_app.client, new_pod()
    body = {"agent_name": "Direct", "agent_version": "2.0.0", "agent_type": "planner", "tenant_id": pod}
    anonymous = await c.post("/api/v1/agents", json=body)
    assert anonymous.status_code == 401
    viewer = await c.post("/api/v1/agents", json=body, headers=auth_as(app, "v", "viewer", pod))
    assert viewer.status_code == 403
    other = await c.post("/api/v1/agents", json=body, headers=auth_as(app, "p", "pod_admin", new_pod()))
    assert other.status_code == 403
    done = await c.post("/api/v1/agents", json=body, headers=auth_as(app, "p", "pod_admin", pod))
    assert done.status_code == 201
    agent = done.json()["agent"]
    assert agent["agent_id"].startswith("planner-") and agent["runtime"] == "external" and agent["tenant_id"] == pod
    bad = await c.post(
        "/api/v1/agents", json={**body, "agent_version": "2.0", "agent_type": "Bad Type"}, headers=app.auth()
    )
    assert bad.status_code == 422 and {e["loc"][-1] for e in bad.json()["errors"]} >= {"agent_version", "agent_type"}


async def test_config_hierarchy_history_and_announcement(agents_app: RunningApp) -> None:
    app, c, pod = agents_app, agents_app.client, new_pod()
    reg = await registered(app, pod)
    agent_id, agent_auth = reg["agent"]["agent_id"], bearer(reg["credentials"]["access_token"])
    shown = (await c.get(f"/api/v1/agents/{agent_id}/config", headers=agent_auth)).json()
    assert shown["version"] == 0 and shown["config"]["log_level"] == {"value": "INFO", "source": "default"}

    bad = await c.put(
        f"/api/v1/agents/{agent_id}/config",
        headers=agent_auth,
        json={"log_level": "LOUD", "heartbeat_interval_seconds": -1, "colour": "red"},
    )
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_config"
    assert {e["loc"][0] for e in bad.json()["errors"]} == {"log_level", "heartbeat_interval_seconds", "colour"}

    nc = await nats.connect(app.fabric.settings.nats.url or "")
    try:
        async with collect(nc, names.agent_control_subject(agent_id)) as seen:
            put = await c.put(
                f"/api/v1/agents/{agent_id}/config",
                headers={**agent_auth, "If-Match": "0"},
                json={"log_level": "DEBUG", "settings": {"depth": 2}},
            )
            assert put.status_code == 200, put.text
            assert put.json()["config"]["log_level"] == {"value": "DEBUG", "source": "agent"}
            await until(lambda: len(seen) >= 1, timeout=10, what="config change on the agent's control subject")
    finally:
        await nc.close()
    event = seen[0]
    assert event["type"] == names.AGENT_CONFIG_EVENT_TYPE and event["data"]["version"] == 1
    assert event["data"]["config"]["log_level"] == "DEBUG" and event["data"]["config"]["settings"] == {"depth": 2}

    stale = await c.put(f"/api/v1/agents/{agent_id}/config", headers={**agent_auth, "If-Match": "0"}, json={})
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    await c.put(f"/api/v1/agents/{agent_id}/config", headers=app.auth(), json={"log_level": "ERROR"})
    history = (await c.get(f"/api/v1/agents/{agent_id}/config/history", headers=agent_auth)).json()["versions"]
    assert [v["body"].get("log_level") for v in history] == ["ERROR", "DEBUG"]
    changes = await audit(app, action="agent.config_changed", tenant_id=pod)
    assert [e["response"]["version"] for e in changes] == [2, 1]


async def test_lifecycle_refusals_and_registry_facts(agents_app: RunningApp) -> None:
    app, c, pod = agents_app, agents_app.client, new_pod()
    agent_id = (await registered(app, pod))["agent"]["agent_id"]
    registry = app.fabric.agents.registry
    await registry.transition(agent_id, AgentStatus.RUNNING, reason="pid 7", actor="runtime")
    admin = app.auth()
    busy = await c.delete(f"/api/v1/agents/{agent_id}", headers=admin)
    assert busy.status_code == 409 and busy.json()["code"] == "agent_running"
    health = (await c.get(f"/api/v1/agents/{agent_id}/health", headers=admin)).json()
    assert health["status"] == "running" and health["reason"] == "pid 7" and health["heartbeat"] is None
    await registry.transition(agent_id, AgentStatus.FAILED, reason="exit 3", actor="runtime")
    metrics = (await c.get(f"/api/v1/agents/{agent_id}/metrics", headers=admin)).json()
    assert (metrics["starts"], metrics["failures"], metrics["transitions"]) == (1, 1, 3)
    logs = (await c.get(f"/api/v1/agents/{agent_id}/logs", headers=admin)).json()["entries"]
    assert [e["level"] for e in logs] == ["INFO", "INFO", "ERROR"] and logs[-1][
        "message"
    ] == "running -> failed: exit 3"
    changed = await c.put(f"/api/v1/agents/{agent_id}", headers={**admin, "If-Match": '"1"'}, json={"labels": {}})
    assert changed.status_code == 409
    current = (await c.get(f"/api/v1/agents/{agent_id}", headers=admin)).headers["etag"]
    changed = await c.put(
        f"/api/v1/agents/{agent_id}", headers={**admin, "If-Match": current}, json={"labels": {"team": "sec"}}
    )
    assert changed.status_code == 200 and changed.json()["labels"] == {"team": "sec"}
    assert (await c.delete(f"/api/v1/agents/{agent_id}", headers=admin)).status_code == 204
    assert (await c.get(f"/api/v1/agents/{agent_id}", headers=admin)).status_code == 404
    assert "agent.deleted" in {e["action"] for e in await audit(app, tenant_id=pod)}


async def test_every_route_keeps_tenants_apart(agents_app: RunningApp) -> None:
    app, c = agents_app, agents_app.client
    pod, other_pod = new_pod(), new_pod()
    reg = await registered(app, pod)
    agent_id = reg["agent"]["agent_id"]
    sibling = (await registered(app, pod))["agent"]["agent_id"]
    outsider = auth_as(app, "eve", "pod_admin", other_pod)
    reads = ["", "/config", "/config/history", "/health", "/metrics", "/logs"]
    for suffix in reads:
        response = await c.get(f"/api/v1/agents/{agent_id}{suffix}", headers=outsider)
        assert response.status_code == 404, suffix
        assert (
            await c.get(f"/api/v1/agents/{agent_id}{suffix}", headers=auth_as(app, "v", "viewer", pod))
        ).status_code == 200
    for method, suffix, body in [("PUT", "", {"labels": {}}), ("PUT", "/config", {}), ("DELETE", "", None)]:
        response = await c.request(method, f"/api/v1/agents/{agent_id}{suffix}", headers=outsider, json=body)
        assert response.status_code == 404, (method, suffix)
    listed = (await c.get("/api/v1/agents", headers=outsider)).json()["items"]
    assert agent_id not in {a["agent_id"] for a in listed}
    sneaky = await c.get("/api/v1/agents", headers=outsider, params={"tenant_id": pod})
    assert sneaky.status_code == 403
    viewer = auth_as(app, "v", "viewer", pod)
    assert (await c.put(f"/api/v1/agents/{agent_id}/config", headers=viewer, json={})).status_code == 403
    assert (await c.delete(f"/api/v1/agents/{agent_id}", headers=viewer)).status_code == 403
    agent_auth = bearer(reg["credentials"]["access_token"])
    assert (await c.get(f"/api/v1/agents/{sibling}", headers=agent_auth)).status_code == 403
    assert (await c.put(f"/api/v1/agents/{sibling}/config", headers=agent_auth, json={})).status_code == 403
    assert (await c.put(f"/api/v1/agents/{agent_id}", headers=agent_auth, json={})).status_code == 403
    tokens = await c.get("/api/v1/agents/discovery-tokens", headers=outsider)
    assert all(t["tenant_id"] == other_pod for t in tokens.json()["items"])
    minted = await c.post("/api/v1/agents/discovery-tokens", headers=outsider, json={"tenant_id": pod})
    assert minted.status_code == 403


async def test_tasks_must_name_a_registered_agent_of_their_tenant(agents_app: RunningApp) -> None:
    app, c, pod = agents_app, agents_app.client, new_pod()
    agent_id = (await registered(app, pod))["agent"]["agent_id"]
    submitter = auth_as(app, "s", "pod_admin", pod)

    def with_agent(job: str, agent: str) -> dict[str, Any]:
        spec = task(job)
        spec["agent_definition"] = {"runtime": "builtin", "agent_id": agent}
        return spec

    unknown = await c.post("/api/v1/tasks", headers=submitter, json=with_agent("u-1", "security-nope"))
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_agent"
    foreign = (await registered(app, new_pod()))["agent"]["agent_id"]
    elsewhere = await c.post("/api/v1/tasks", headers=submitter, json=with_agent("u-2", foreign))
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "unknown_agent"
    accepted = await c.post("/api/v1/tasks", headers=submitter, json=with_agent("u-3", agent_id))
    assert accepted.status_code == 202, accepted.text

    nc = await nats.connect(app.fabric.settings.nats.url or "")
    try:
        async with collect(nc, names.status_subject("failed")) as failed:
            data = {**with_agent("u-4", "security-nope"), "tenant_id": pod}
            await nc.publish(
                names.task_subject("normal"),
                structured(data),
                headers={"Authorization": submitter["Authorization"]},
            )
            await until(lambda: any(e["data"].get("job_id") == "u-4" for e in failed), what="NATS refusal")
    finally:
        await nc.close()
    refusal = next(e for e in failed if e["data"].get("job_id") == "u-4")
    assert refusal["data"]["error"]["code"] == "unknown_agent"
    assert orjson.dumps(refusal)  # a well-formed CloudEvent


async def test_agent_scheduler_names_registered_agents(agents_app: RunningApp) -> None:
    app, pod = agents_app, new_pod()
    agent_id = (await registered(app, pod))["agent"]["agent_id"]
    scheduler = app.fabric.scheduler
    with pytest.raises(InvalidTask) as unknown:
        await scheduler.schedule(TaskBody(type="echo"), "security-0000", tenant_id=pod)
    assert unknown.value.code == "unknown_agent"
    with pytest.raises(InvalidTask) as foreign:
        await scheduler.schedule(TaskBody(type="echo"), agent_id, tenant_id=new_pod())
    assert foreign.value.code == "unknown_agent"
    # Known in its own tenant: admission passes the agent check and reaches the runtime's own
    # (this agent registered without a package, so no runtime on this fabric can run it).
    try:
        handle = await scheduler.schedule(TaskBody(type="echo"), agent_id, tenant_id=pod)
    except InvalidTask as exc:
        assert exc.code == "runtime_unavailable", exc.message
    else:
        assert handle.status.value == "queued"


async def test_list_filters_and_pages(agents_app: RunningApp) -> None:
    app, c, pod = agents_app, agents_app.client, new_pod()
    admin = app.auth()
    made = []
    for kind in ("alpha", "alpha", "beta"):
        body = {"agent_name": f"L-{kind}", "agent_version": "1.0.0", "agent_type": kind, "tenant_id": pod}
        made.append((await c.post("/api/v1/agents", json=body, headers=admin)).json()["agent"]["agent_id"])
    await app.fabric.agents.registry.transition(made[2], AgentStatus.RUNNING, reason="test", actor="test")

    def ids(response: Any) -> list[str]:
        return [a["agent_id"] for a in response.json()["items"]]

    alphas = await c.get("/api/v1/agents", headers=admin, params={"tenant_id": pod, "type": "alpha"})
    assert sorted(ids(alphas)) == sorted(made[:2]) and alphas.json()["total"] == 2
    running = await c.get("/api/v1/agents", headers=admin, params={"tenant_id": pod, "status": "running"})
    assert ids(running) == [made[2]]
    first = await c.get("/api/v1/agents", headers=admin, params={"tenant_id": pod, "type": "alpha", "limit": 1})
    second = await c.get(
        "/api/v1/agents", headers=admin, params={"tenant_id": pod, "type": "alpha", "limit": 1, "offset": 1}
    )
    assert len(ids(first)) == 1 and len(ids(second)) == 1 and set(ids(first) + ids(second)) == set(made[:2])
    bad = await c.get("/api/v1/agents", headers=admin, params={"status": "sleeping"})
    assert bad.status_code == 422

"""Agent Zero instances registered through /api/v2/agent/instances, and /api/v2/agent/health.

Stand-ins speak Agent Zero's protocol over real HTTP; NATS, Postgres and SQLite are real.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage.tables import agent_zero_instances
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.agent_zero_standin import running_standin
from tests.support.flows import audit, auth_as, new_pod, until
from tests.support.nats_server import free_port

KEY = "standin-key-0123456789"
POD_KEY = "pod-own-key-9876543210-secret"


async def register(app: RunningApp, headers: dict[str, str], **body: Any) -> Any:
    return await app.client.post("/api/v2/agent/instances", headers=headers, json={"api_key": POD_KEY, **body})


async def test_register_list_and_remove_an_instance(fabric_app: RunningApp) -> None:
    pod, other = new_pod(), new_pod()
    alice, mallory = auth_as(fabric_app, "alice", "pod_admin", pod), auth_as(fabric_app, "mallory", "pod_admin", other)
    with running_standin(POD_KEY) as (url, _):
        before = (await fabric_app.client.get("/api/v2/agent/health", headers=alice)).json()
        assert before["status"] == "down" and before["instances"] == []
        created = await register(fabric_app, alice, url=url + "/")
        assert created.status_code == 201, created.text
        body = created.json()
        assert POD_KEY not in created.text and "api_key" not in body
        assert body["url"] == url and body["tenant_id"] == pod and body["source"] == "api"
        assert body["status"] == "idle" and body["version"] == "M v1.7" and body["serving"] is True  # checked at once
        assert body["mode_set"] == "SANDBOX" == body["mode"] and created.headers["x-fabric-mode"] == "SANDBOX"
        assert body["registered_by"] == "alice"
        instance_id = body["id"]
        async with fabric_app.fabric.engine.connect() as conn:
            # The Postgres database is shared by the session: other tests' instances are there too.
            mine = agent_zero_instances.c.id == instance_id
            stored = (await conn.execute(select(agent_zero_instances.c.api_key).where(mine))).scalar_one()
        assert stored.startswith("sealed:v1:") and POD_KEY not in stored  # sealed at rest
        after = (await fabric_app.client.get("/api/v2/agent/health", headers=alice)).json()
        assert after["cached"] is False and after["status"] == "up"  # a new instance set: a new report

        duplicate = await register(fabric_app, alice, url=url)
        assert duplicate.status_code == 409 and duplicate.json()["code"] == "instance_exists"
        for bad in ("ftp://a0.example.com", "http://user:pw@a0.example.com", "a0.example.com", "http://a0:99999"):
            refused = await register(fabric_app, alice, url=bad)
            assert refused.status_code == 422 and refused.json()["code"] == "invalid_url", bad
        shared = await register(fabric_app, alice, url="http://a0.example.com", shared=True)
        assert shared.status_code == 403 and shared.json()["code"] == "admin_only"
        missing_key = await fabric_app.client.post("/api/v2/agent/instances", headers=alice, json={"url": url})
        assert missing_key.status_code == 422

        listed = (await fabric_app.client.get("/api/v2/agent/instances", headers=alice)).json()["items"]
        assert [i["id"] for i in listed] == [instance_id] and POD_KEY not in orjson.dumps(listed).decode()
        assert (await fabric_app.client.get("/api/v2/agent/instances", headers=mallory)).json()["items"] == []
        foreign = await fabric_app.client.delete(f"/api/v2/agent/instances/{instance_id}", headers=mallory)
        assert foreign.status_code == 404 and foreign.json()["code"] == "instance_not_found"
        for role in ("agent", "viewer"):
            headers = auth_as(fabric_app, "x", role, pod)
            assert (await fabric_app.client.get("/api/v2/agent/instances", headers=headers)).status_code == 403
            assert (await register(fabric_app, headers, url="http://a0.example.com")).status_code == 403

        removed = await fabric_app.client.delete(f"/api/v2/agent/instances/{instance_id}", headers=alice)
        assert removed.status_code == 200 and removed.json()["removed"] is True
        assert fabric_app.fabric.fleet.by_url(url) is None
        assert (await fabric_app.client.get("/api/v2/agent/instances", headers=alice)).json()["items"] == []
        gone = await fabric_app.client.get(f"/api/v2/agent/instances/{instance_id}", headers=alice)
        assert gone.status_code == 404
        again = await register(fabric_app, alice, url=url)  # a removed URL may be registered anew
        assert again.status_code == 201 and again.json()["id"] != instance_id

    entries = await audit(fabric_app, tenant_id=pod)
    assert POD_KEY not in orjson.dumps(entries).decode()
    registered = [e for e in entries if e["action"] == "agent.instance.register"]
    assert {e["response"].get("id") for e in registered} >= {instance_id}
    assert any(e["response"].get("error") == "instance_exists" for e in registered)
    assert [e["request"]["id"] for e in entries if e["action"] == "agent.instance.remove"] == [instance_id]


async def test_an_admin_registers_a_shared_instance(fabric_app: RunningApp) -> None:
    pod = new_pod()
    with running_standin(POD_KEY) as (url, _):
        created = await register(fabric_app, fabric_app.auth(), url=url, shared=True, mode_set="LIVE")
        assert created.status_code == 422 and created.json()["code"] == "tenant_required"  # admins name the POD
        created = await fabric_app.client.post(
            f"/api/v2/agent/instances?tenant_id={pod}",
            headers=fabric_app.auth(),
            json={"url": url, "api_key": POD_KEY, "shared": True, "mode_set": "LIVE"},
        )
        assert created.status_code == 201 and created.json()["tenant_id"] is None
        instance_id = created.json()["id"]
        anyone = auth_as(fabric_app, "bob", "pod_admin", new_pod())
        seen = (await fabric_app.client.get("/api/v2/agent/instances", headers=anyone)).json()["items"]
        assert [(i["id"], i["serving"]) for i in seen] == [(instance_id, True)]  # SANDBOX PODs fall back to LIVE
        refused = await fabric_app.client.delete(f"/api/v2/agent/instances/{instance_id}", headers=anyone)
        assert refused.status_code == 403 and refused.json()["code"] == "shared_instance"
        removed = await fabric_app.client.delete(
            f"/api/v2/agent/instances/{instance_id}?tenant_id={pod}", headers=fabric_app.auth()
        )
        assert removed.status_code == 200


async def wait_final(app: RunningApp, job: str, tenant: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            task = (await app.client.get(f"/api/v1/tasks/{job}?tenant_id={tenant}", headers=app.auth())).json()
            if task["status"] not in ("queued", "running"):
                return dict(task)
            await asyncio.sleep(0.05)


def agent_task(job: str, tenant: str, message: str) -> dict[str, Any]:
    return {
        "job_id": job,
        "tenant_id": tenant,
        "agent_definition": {"runtime": "agent-zero"},
        "task": {"type": "CHAT", "message": message},
    }


async def test_a_registered_instance_serves_its_pod_only(tmp_path: Path, nats_url: str) -> None:
    own_pod, other_pod = new_pod(), new_pod()
    with running_standin(KEY) as (shared_url, shared), running_standin(POD_KEY) as (own_url, own):
        settings = make_settings(
            tmp_path, nats_url, agent_zero=AgentZeroSettings(url=shared_url, api_key=KEY, poll_seconds=0.1)
        )
        async with running_app(settings) as app:
            created = await register(app, auth_as(app, "alice", "pod_admin", own_pod), url=own_url)
            assert created.status_code == 201, created.text
            jobs = {pod: [new_job_id("reg") for _ in range(3)] for pod in (own_pod, other_pod)}
            for pod, ids in jobs.items():
                for job in ids:
                    posted = await app.client.post("/api/v1/tasks", headers=app.auth(), json=agent_task(job, pod, "hi"))
                    assert posted.status_code == 202, posted.text
            used = {
                pod: {(await wait_final(app, job, pod))["result"]["instance"] for job in ids}
                for pod, ids in jobs.items()
            }
            assert used == {own_pod: {own_url}, other_pod: {shared_url}}
            assert own.stats.messages == 6 and shared.stats.messages == 6  # priming + task, three times each
            assert own.stats.bad_keys == 0  # the registered key was used for the registered instance


async def test_a_second_replica_follows_registrations(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str
) -> None:
    pod = new_pod()

    def settings(name: str) -> Any:
        return make_settings(tmp_path / name, nats_url, database_url=postgres_url, redis_url=redis_url)

    with running_standin(POD_KEY) as (url, _):
        async with running_app(settings("a")) as first, running_app(settings("b")) as second:
            created = await register(first, auth_as(first, "alice", "pod_admin", pod), url=url)
            assert created.status_code == 201
            instance_id = created.json()["id"]
            await until(lambda: instance_id in second.fabric.fleet.registered(), timeout=2, what="replica b sees it")
            mirrored = second.fabric.fleet.registered()[instance_id]
            assert mirrored.url == url and mirrored.tenant_id == pod and mirrored.version == "M v1.7"
            on_b = await second.client.get(
                "/api/v2/agent/instances", headers=auth_as(second, "alice", "pod_admin", pod)
            )
            assert [i["id"] for i in on_b.json()["items"]] == [instance_id]
            twin = await register(second, auth_as(second, "alice", "pod_admin", pod), url=url)
            assert twin.status_code == 409  # one registration per URL, whichever replica is asked

            removed = await second.client.delete(
                f"/api/v2/agent/instances/{instance_id}", headers=auth_as(second, "alice", "pod_admin", pod)
            )
            assert removed.status_code == 200
            await until(lambda: instance_id not in first.fabric.fleet.registered(), timeout=2, what="a drops it")


async def test_health_is_cached_per_pod_and_reports_the_version(tmp_path: Path, nats_url: str) -> None:
    pod = new_pod()
    port = free_port()
    with contextlib.ExitStack() as standin:
        url, _ = standin.enter_context(running_standin(KEY, port=port))
        settings = make_settings(
            tmp_path,
            nats_url,
            agent_zero=AgentZeroSettings(url=url, api_key=KEY, retries=0, health_interval_seconds=60),
        )
        async with running_app(settings) as app:
            alice = auth_as(app, "alice", "pod_admin", pod)
            first = await app.client.get("/api/v2/agent/health", headers=alice)
            assert first.status_code == 200 and first.headers["x-fabric-mode"] == "SANDBOX"
            body = first.json()
            assert body["status"] == "up" and body["cached"] is False and body["pod_id"] == pod
            assert [(i["url"], i["status"], i["version"]) for i in body["instances"]] == [(url, "up", "M v1.7")]

            standin.close()  # Agent Zero goes away: the cached answer stands for 30 s
            second = (await app.client.get("/api/v2/agent/health", headers=alice)).json()
            assert second["cached"] is True and second["status"] == "up" and second["checked_at"] == body["checked_at"]
            other = (
                await app.client.get("/api/v2/agent/health", headers=auth_as(app, "b", "pod_admin", new_pod()))
            ).json()
            assert other["cached"] is False and other["status"] == "down"  # the cache is per POD
            fresh = (await app.client.get("/api/v2/agent/health?refresh=true", headers=alice)).json()
            assert fresh["cached"] is False and fresh["status"] == "down" and fresh["instances"][0]["error"]
            for role in ("agent", "viewer"):
                denied = await app.client.get("/api/v2/agent/health", headers=auth_as(app, "x", role, pod))
                assert denied.status_code == 403
            requests = await audit(app, tenant_id=pod, action="agent_api.request")
            assert [e["request"]["path"] for e in requests].count("/api/v2/agent/health") == 3


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_without_any_instance_health_is_down_and_no_fleet_starts(fabric_app: RunningApp) -> None:
    alice = auth_as(fabric_app, "a", "pod_admin", new_pod())
    report = (await fabric_app.client.get("/api/v2/agent/health", headers=alice)).json()
    assert report["status"] == "down" and report["instances"] == [] and "no Agent Zero instance" in report["detail"]
    refused = await fabric_app.client.post("/api/v2/agent/fleet/start", headers=alice)
    assert refused.status_code == 409 and refused.json()["code"] == "runtime_unavailable"
    fleet = (await fabric_app.client.get("/api/v2/agent/fleet", headers=alice)).json()
    assert fleet["started"] is False and fleet["agents"] == [] and fleet["instances"] == []

"""A POD's Agent Zero fleet through /api/v2/agent/fleet and /agents: an orchestrator and the
specialists under it, each one chat on a stand-in Agent Zero (real HTTP), status read live."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agent_fabric.agent_zero.client import AgentZeroClient
from tests.conftest import RunningApp, running_app
from tests.integration.conftest import agent_zero_settings
from tests.support.agent_zero_standin import AgentZeroStandIn, running_standin
from tests.support.flows import audit, auth_as, new_pod, until
from tests.support.nats_server import free_port

KEY = "standin-key-0123456789"


async def post(app: RunningApp, path: str, headers: dict[str, str], body: Any = None) -> Any:
    return await app.client.post(f"/api/v2/agent{path}", headers=headers, json=body)


async def get(app: RunningApp, path: str, headers: dict[str, str]) -> Any:
    return await app.client.get(f"/api/v2/agent{path}", headers=headers)


async def test_fleet_start_spawn_terminate_and_stop(
    fleet_app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, a0 = standin
    pod = new_pod()
    alice = auth_as(fleet_app, "alice", "pod_admin", pod)
    assert (await get(fleet_app, "/fleet", alice)).json()["started"] is False
    early = await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"})
    assert early.status_code == 409 and early.json()["code"] == "fleet_stopped"

    started = await post(fleet_app, "/fleet/start", alice)
    assert started.status_code == 201, started.text
    fleet = started.json()
    orchestrator = fleet["orchestrator"]
    assert fleet["started"] is True and fleet["mode"] == "SANDBOX" and started.headers["x-fabric-mode"] == "SANDBOX"
    assert orchestrator["role"] == "orchestrator" and orchestrator["profile"] == "gpubroker-orchestrator"
    assert (
        orchestrator["status"] == "idle" and orchestrator["instance_url"] == url and orchestrator["parent_id"] is None
    )
    assert a0.contexts[orchestrator["context_id"]].profile == "gpubroker-orchestrator"  # what Agent Zero was sent
    again = await post(fleet_app, "/fleet/start", alice)
    assert again.status_code == 200 and again.json()["orchestrator"]["id"] == orchestrator["id"]
    assert len(a0.contexts) == 1

    provisioner = await post(fleet_app, "/agents/spawn", alice, {"task_type": "DEPLOY_GPU"})
    assert provisioner.status_code == 201, provisioner.text
    p = provisioner.json()
    assert (
        p["role"] == "specialist" and p["profile"] == "gpubroker-provisioner" and p["parent_id"] == orchestrator["id"]
    )
    assert a0.contexts[p["context_id"]].profile == "gpubroker-provisioner"
    helper = await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-provider", "parent_id": p["id"]})
    assert helper.status_code == 201 and helper.json()["parent_id"] == p["id"]
    monitor = (await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"})).json()

    for bad, code, status in [
        ({}, "profile_required", 422),
        ({"task_type": "PAINT"}, "unknown_task_type", 422),
        ({"profile": "gpubroker-orchestrator"}, "orchestrator_profile", 422),
        ({"profile": "gpubroker-monitor", "parent_id": "abcdef0123456789"}, "agent_not_found", 404),
        ({"profile": "../etc"}, "invalid_request", 422),
    ]:
        refused = await post(fleet_app, "/agents/spawn", alice, bad)
        assert (refused.status_code, refused.json()["code"]) == (status, code), bad

    listed = (await get(fleet_app, "/agents", alice)).json()["items"]
    assert [a["id"] for a in listed] == [orchestrator["id"], p["id"], helper.json()["id"], monitor["id"]]
    assert {a["status"] for a in listed} == {"idle"}

    ended = await post(fleet_app, f"/agents/{p['id']}/terminate", alice)
    assert ended.status_code == 200 and ended.json()["status"] == "terminated" and ended.json()["terminated_at"]
    assert set(ended.json()["terminated"]) == {p["id"], helper.json()["id"]}  # the child went with it
    assert p["context_id"] not in a0.contexts and helper.json()["context_id"] not in a0.contexts
    assert a0.stats.terminated_chats == 2
    child = (await get(fleet_app, f"/agents/{helper.json()['id']}", alice)).json()
    assert child["status"] == "terminated"
    twice = await post(fleet_app, f"/agents/{p['id']}/terminate", alice)
    assert twice.status_code == 200 and twice.json()["terminated"] == []
    orphan = await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-monitor", "parent_id": p["id"]})
    assert orphan.status_code == 409 and orphan.json()["code"] == "parent_terminated"
    everyone = (await get(fleet_app, "/agents?include_terminated=true", alice)).json()["items"]
    assert len(everyone) == 4 and len((await get(fleet_app, "/agents", alice)).json()["items"]) == 2

    stopped = await post(fleet_app, "/fleet/stop", alice)
    assert stopped.status_code == 200 and stopped.json()["started"] is False and stopped.json()["agents"] == []
    assert set(stopped.json()["terminated"]) == {orchestrator["id"], monitor["id"]}
    assert a0.contexts == {} and a0.stats.terminated_chats == 4
    restarted = await post(fleet_app, "/fleet/start", alice)
    assert restarted.status_code == 201 and restarted.json()["orchestrator"]["id"] != orchestrator["id"]

    actions = [e["action"] for e in await audit(fleet_app, tenant_id=pod) if e["action"].startswith("agent.")]
    assert actions.count("agent.spawn") == 9 and actions.count("agent.fleet.start") == 3  # refusals included
    assert {"agent.terminate", "agent.fleet.stop"} <= set(actions)


async def test_max_agents_per_pod(fleet_app: RunningApp) -> None:
    pod = new_pod()
    alice = auth_as(fleet_app, "alice", "pod_admin", pod)
    configured = await fleet_app.client.put(
        f"/api/v1/config/{pod}", headers=fleet_app.auth(), json={"agent_zero": {"max_agents": 3}}
    )
    assert configured.status_code == 200, configured.text
    assert (await post(fleet_app, "/fleet/start", alice)).json()["max_agents"] == 3
    spawned = [await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"}) for _ in range(3)]
    assert [r.status_code for r in spawned] == [201, 201, 429]
    assert spawned[2].json()["code"] == "max_agents" and spawned[2].json()["limit"] == 3
    await post(fleet_app, f"/agents/{spawned[0].json()['id']}/terminate", alice)
    assert (await post(fleet_app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"})).status_code == 201


async def test_two_replicas_never_exceed_the_limit(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    pod = new_pod()
    url = standin[0]
    settings = [
        agent_zero_settings(tmp_path / n, nats_url, url, postgres_url, redis_url, max_agents_per_pod=4) for n in "ab"
    ]
    async with running_app(settings[0]) as a, running_app(settings[1]) as b:
        assert (await post(a, "/fleet/start", auth_as(a, "alice", "pod_admin", pod))).status_code == 201
        spawns = [
            post(app, "/agents/spawn", auth_as(app, "alice", "pod_admin", pod), {"profile": "gpubroker-optimizer"})
            for app in (a, b) * 4
        ]
        codes = sorted(r.status_code for r in await asyncio.gather(*spawns))
        assert codes == [201, 201, 201] + [429] * 5
        assert len((await get(b, "/agents", auth_as(b, "alice", "pod_admin", pod))).json()["items"]) == 4


async def test_status_follows_the_chat_and_the_instance(tmp_path: Path, nats_url: str) -> None:
    pod = new_pod()
    port = free_port()
    with contextlib.ExitStack() as served:
        url, a0 = served.enter_context(running_standin(KEY, port=port))
        settings = agent_zero_settings(tmp_path, nats_url, url, None, None, retries=0, health_interval_seconds=0.3)
        async with running_app(settings) as app:
            alice = auth_as(app, "alice", "pod_admin", pod)
            orchestrator = (await post(app, "/fleet/start", alice)).json()["orchestrator"]
            worker = (await post(app, "/agents/spawn", alice, {"profile": "gpubroker-optimizer"})).json()
            lost = (await post(app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"})).json()

            direct = AgentZeroClient(url, KEY)  # someone gives the worker's chat something to do
            running = asyncio.create_task(direct.message("[sleep 1.5] optimise", context_id=worker["context_id"]))
            await until(lambda: a0.contexts[worker["context_id"]].running is not None, what="the chat works")
            busy = (await get(app, f"/agents/{worker['id']}", alice)).json()
            assert busy["status"] == "busy" and busy["progress"]
            await running
            assert (await get(app, f"/agents/{worker['id']}", alice)).json()["status"] == "idle"

            await direct.terminate_chat(lost["context_id"])  # Agent Zero drops a chat behind the fabric's back
            await direct.aclose()
            gone = (await get(app, f"/agents/{lost['id']}", alice)).json()
            assert gone["status"] == "error" and lost["context_id"] in gone["last_error"]
            assert (await get(app, "/fleet", alice)).json()["counts"] == {"idle": 2, "error": 1}

            served.close()  # the instance goes down: every agent on it reads error
            await until(lambda: not app.fabric.fleet.by_url(url).healthy, timeout=5, what="instance down")
            agents = (await get(app, "/agents", alice)).json()["items"]
            assert {a["id"]: a["status"] for a in agents} == {
                orchestrator["id"]: "error",
                worker["id"]: "error",
                lost["id"]: "error",
            }
            assert all(a["last_error"] for a in agents)
            refused = await post(app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"})
            assert refused.status_code == 503 and refused.json()["code"] == "agent_unreachable"
            stopped = await post(app, "/fleet/stop", alice)  # still possible: the chats are noted as left behind
            assert stopped.status_code == 200 and len(stopped.json()["terminated"]) == 3

            notes = (await get(app, "/agents?include_terminated=true", alice)).json()["items"]
            assert "could not be deleted" in {a["id"]: a for a in notes}[orchestrator["id"]]["last_error"]

            with running_standin(KEY, port=port):  # back: a fresh fleet starts on it
                await until(lambda: app.fabric.fleet.by_url(url).healthy, timeout=5, what="instance back")
                assert (await post(app, "/fleet/start", alice)).status_code == 201


async def test_fleet_access_is_per_pod_and_pod_admin_only(fleet_app: RunningApp) -> None:
    pod = new_pod()
    alice, mallory = auth_as(fleet_app, "alice", "pod_admin", pod), auth_as(fleet_app, "m", "pod_admin", new_pod())
    orchestrator = (await post(fleet_app, "/fleet/start", alice)).json()["orchestrator"]
    assert (await get(fleet_app, f"/agents/{orchestrator['id']}", mallory)).status_code == 404
    foreign = await post(fleet_app, f"/agents/{orchestrator['id']}/terminate", mallory)
    assert foreign.status_code == 404 and foreign.json()["code"] == "agent_not_found"
    assert (await get(fleet_app, "/agents", mallory)).json()["items"] == []
    assert (await get(fleet_app, f"/agents/{orchestrator['id']}", alice)).json()["status"] == "idle"
    admin = await get(fleet_app, f"/agents/{orchestrator['id']}?tenant_id={pod}", fleet_app.auth())
    assert admin.status_code == 200
    for role in ("agent", "viewer"):
        headers = auth_as(fleet_app, "x", role, pod)
        for method, path in [
            ("GET", "/fleet"),
            ("POST", "/fleet/start"),
            ("POST", "/fleet/stop"),
            ("GET", "/agents"),
            ("GET", f"/agents/{orchestrator['id']}"),
            ("POST", "/agents/spawn"),
            ("POST", f"/agents/{orchestrator['id']}/terminate"),
        ]:
            response = await fleet_app.client.request(method, f"/api/v2/agent{path}", headers=headers, json={})
            assert response.status_code == 403, (role, path)
    assert (await get(fleet_app, f"/agents/{orchestrator['id']}", alice)).json()["status"] == "idle"


async def test_an_agent_terminated_while_its_chat_opens_leaves_no_chat(
    tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, a0 = standin
    pod = new_pod()
    async with running_app(agent_zero_settings(tmp_path, nats_url, url, None, None, max_in_flight=1)) as app:
        alice = auth_as(app, "alice", "pod_admin", pod)
        assert (await post(app, "/fleet/start", alice)).status_code == 201
        task = {
            "job_id": "slot-holder",
            "tenant_id": pod,
            "agent_definition": {"runtime": "agent-zero"},
            "task": {"type": "CHAT", "message": "[sleep 1.5] hold the only slot"},
        }
        assert (await app.client.post("/api/v1/tasks", headers=app.auth(), json=task)).status_code == 202
        await until(lambda: app.fabric.fleet.by_url(url).in_flight == 1, what="the task holds the slot")
        spawning = asyncio.create_task(post(app, "/agents/spawn", alice, {"profile": "gpubroker-monitor"}))

        async def starting() -> list[dict[str, Any]]:
            items = (await get(app, "/agents", alice)).json()["items"]
            return [a for a in items if a["status"] == "starting"]

        async with asyncio.timeout(5):
            while not (waiting := await starting()):
                await asyncio.sleep(0.05)
        ended = await post(app, f"/agents/{waiting[0]['id']}/terminate", alice)
        assert ended.status_code == 200 and ended.json()["terminated"] == [waiting[0]["id"]]
        late = await spawning  # its chat opened after the slot freed, found itself terminated, deleted the chat
        assert late.status_code == 409 and late.json()["code"] == "agent_terminated"
        assert a0.stats.terminated_chats == 1
        # The task (no profile) ran in the orchestrator's chat: no chat of its own.
        assert {c.profile for c in a0.contexts.values()} == {"gpubroker-orchestrator"}

"""The agent-zero runtime against a stand-in that speaks Agent Zero's documented protocol."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_fabric.agent_zero.a2a_client import AgentZeroA2AClient
from agent_fabric.agent_zero.client import AgentZeroClient, AgentZeroError
from agent_fabric.agent_zero.log_follower import LogFollower, find_user_item
from agent_fabric.agent_zero.mcp_client import AgentZeroMcpClient
from agent_fabric.settings import AgentZeroSettings
from tests.conftest import RunningApp, make_settings, new_job_id, running_app
from tests.support.agent_zero_standin import AgentZeroStandIn, running_standin
from tests.support.nats_server import free_port

KEY = "standin-key-0123456789"


async def test_client_speaks_the_api_key_endpoints(standin: tuple[str, AgentZeroStandIn]) -> None:
    url, _ = standin
    client = AgentZeroClient(url, KEY, retries=1, backoff=0.01)
    try:
        assert (await client.health())["version"] == "M v1.7"
        reply = await client.message("hello")
        assert len(reply.context_id) == 8 and reply.response == "Done: hello"
        items = (await client.log(reply.context_id))["items"]
        assert [i["type"] for i in items[:2]] == ["response", "user"]  # the greeting comes first
        again = await client.message("more", context_id=reply.context_id)
        assert again.context_id == reply.context_id
        with pytest.raises(AgentZeroError) as missing:
            await client.message("x", context_id="nosuchid")
        assert missing.value.code == "agent_context_not_found"
        await client.terminate_chat(reply.context_id)
        with pytest.raises(AgentZeroError):
            await client.log(reply.context_id)
    finally:
        await client.aclose()


class Progress:
    """A follower's sink that keeps what it was told."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def progress(self, data: dict[str, Any]) -> None:
        self.items.append(data)


async def test_the_same_words_answered_before_are_not_the_running_message(
    standin: tuple[str, AgentZeroStandIn],
) -> None:
    """A session takes its answer from the reply, so the chat's floor can stay before the previous
    message; the same words sent again must not pick up that message's items as their progress."""
    url, _ = standin
    client = AgentZeroClient(url, KEY, retries=0)
    try:
        chat = (await client.message("open")).context_id
        floor = max(int(i["no"]) for i in (await client.log(chat))["items"])
        words = "[sleep 0.5] the same words"
        await client.message(words, context_id=chat)  # answered; the floor is not moved past it

        async def sent_late() -> Any:
            await asyncio.sleep(0.35)  # polls meanwhile see only the earlier, answered message
            return await client.message(words, context_id=chat)

        seen = Progress()
        follower = LogFollower(client, chat, seen, words, 0.1, floor=floor)
        assert await follower.alongside(sent_late(), read_after_answer=False) == f"Done: {words}"
        own = find_user_item(await client.log(chat), words, floor + 3)  # past the earlier message's three items
        assert own is not None and seen.items and all(item["no"] > own for item in seen.items), seen.items
    finally:
        await client.aclose()


async def test_client_errors_map_to_codes(standin: tuple[str, AgentZeroStandIn]) -> None:
    url, _ = standin
    wrong = AgentZeroClient(url, "wrong-key", retries=0)
    with pytest.raises(AgentZeroError) as refused:
        await wrong.message("hi")
    assert refused.value.code == "agent_auth_failed"
    await wrong.aclose()
    failing = AgentZeroClient(url, KEY, retries=0)
    with pytest.raises(AgentZeroError) as failed:
        await failing.message("[fail] please")
    assert failed.value.code == "agent_error" and "LLM provider failed" in failed.value.message
    await failing.aclose()
    down = AgentZeroClient(f"http://127.0.0.1:{free_port()}", KEY, retries=2, backoff=0.01)
    with pytest.raises(AgentZeroError) as unreachable:
        await down.health()
    assert unreachable.value.code == "agent_unreachable"
    await down.aclose()


async def test_client_falls_back_to_bare_paths_on_old_instances() -> None:
    with running_standin(KEY, legacy=True) as (url, _):
        assert (await httpx.AsyncClient().post(f"{url}/api/api_message")).status_code == 404
        client = AgentZeroClient(url, KEY)
        assert (await client.message("old")).response == "Done: old"
        await client.aclose()


def agent_task(job: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "agent_definition": {"runtime": "agent-zero"},
        "task": {"type": "CHAT", "message": message},
        **extra,
    }


async def wait_final(app: RunningApp, job: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            task = (await app.client.get(f"/api/v1/tasks/{job}", headers=app.auth())).json()
            if task["status"] not in ("queued", "running"):
                return dict(task)
            await asyncio.sleep(0.05)


def az_settings(tmp_path: Path, nats_url: str, url: str, **over: Any) -> Any:
    return make_settings(
        tmp_path, nats_url, agent_zero=AgentZeroSettings(url=url, api_key=KEY, poll_seconds=0.1, **over)
    )


async def test_task_runs_on_agent_zero_with_progress(
    tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, instance = standin
    async with running_app(az_settings(tmp_path, nats_url, url)) as app:
        job = new_job_id("az")
        assert (
            await app.client.post("/api/v1/tasks", json=agent_task(job, "[sleep 0.6] plan"), headers=app.auth())
        ).status_code == 202
        task = await wait_final(app, job)
        assert task["status"] == "completed", task
        assert task["result"]["response"] == "Done: [sleep 0.6] plan" and task["result"]["instance"] == url
        events = await app.fabric.store.events_after("default", job, None)
        progress = [e["data"] for e in events if e["kind"] == "progress"]
        assert progress and {p["type"] for p in progress} >= {"agent", "response"}
        assert all(p["no"] > 1 for p in progress)  # greeting and the task's own user item are skipped
        assert instance.stats.messages == 2  # the priming message, then the task


async def test_prompt_is_built_from_type_and_input(
    tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, instance = standin
    async with running_app(az_settings(tmp_path, nats_url, url)) as app:
        job = new_job_id("az-p")
        body = {
            "job_id": job,
            "agent_definition": {"runtime": "agent-zero", "profile": "gpubroker-provisioner"},
            "task": {"type": "FIND_GPU", "input": {"gpu": "H100", "count": 2}},
        }
        await app.client.post("/api/v1/tasks", json=body, headers=app.auth())
        result = (await wait_final(app, job))["result"]
        assert "Task type: FIND_GPU" in result["response"] and '"gpu": "H100"' in result["response"]
        assert instance.contexts[result["context_id"]].profile == "gpubroker-provisioner"  # named by the task

        routed = new_job_id("az-r")
        await app.client.post(
            "/api/v1/tasks",
            headers=app.auth(),
            json={"job_id": routed, "agent_definition": {"runtime": "agent-zero"}, "task": {"type": "HEALTH_CHECK"}},
        )
        routed_context = (await wait_final(app, routed))["result"]["context_id"]
        assert instance.contexts[routed_context].profile == "gpubroker-monitor"  # from the routing table


async def test_failures_timeouts_and_the_in_flight_cap(
    tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, instance = standin
    async with running_app(az_settings(tmp_path, nats_url, url, max_in_flight=2)) as app:
        failing, slow = new_job_id("az-f"), new_job_id("az-t")
        await app.client.post("/api/v1/tasks", json=agent_task(failing, "[fail]"), headers=app.auth())
        await app.client.post(
            "/api/v1/tasks", json=agent_task(slow, "[sleep 5]", timeout_seconds=0.8), headers=app.auth()
        )
        assert (await wait_final(app, failing))["error"]["code"] == "agent_error"
        timed_out = await wait_final(app, slow)
        assert timed_out["status"] == "timed_out" and instance.stats.resets >= 1  # the chat was reset

        jobs = [new_job_id("az-c") for _ in range(6)]
        for job in jobs:
            await app.client.post("/api/v1/tasks", json=agent_task(job, "[sleep 0.4] n"), headers=app.auth())
        finals = [await wait_final(app, job) for job in jobs]
        assert [f["status"] for f in finals] == ["completed"] * len(jobs)
        assert instance.stats.max_messages_in_flight <= 2


async def test_agent_zero_not_configured_is_refused(fabric_app: RunningApp) -> None:
    response = await fabric_app.client.post(
        "/api/v1/tasks", json=agent_task(new_job_id(), "hi"), headers=fabric_app.auth()
    )
    assert response.status_code == 422 and response.json()["code"] == "runtime_unavailable"


async def test_a_down_instance_gets_nothing_and_recovers(tmp_path: Path, nats_url: str) -> None:
    port_a = free_port()
    url_a = f"http://127.0.0.1:{port_a}"
    with running_standin(KEY) as (url_b, _), contextlib.ExitStack() as instance_a:
        a = instance_a.enter_context(running_standin(KEY, port=port_a))[1]
        settings = az_settings(tmp_path, nats_url, f"{url_a},{url_b}", health_interval_seconds=0.3, retries=0)
        async with running_app(settings) as app:
            fleet = app.fabric.fleet
            assert {i.url: i.status for i in fleet.instances} == {url_a: "idle", url_b: "idle"}
            assert fleet.by_url(url_a).version == "M v1.7"

            instance_a.close()  # instance A goes away
            async with asyncio.timeout(5):
                while fleet.by_url(url_a).healthy:
                    await asyncio.sleep(0.05)
            jobs = [new_job_id("fleet") for _ in range(4)]
            for job in jobs:
                await app.client.post("/api/v1/tasks", json=agent_task(job, "hi"), headers=app.auth())
            assert {(await wait_final(app, job))["result"]["instance"] for job in jobs} == {url_b}
            assert a.stats.messages == 0 and fleet.by_url(url_a).status == "error"

            with running_standin(KEY, port=port_a) as (_, a_again):  # A is back at the same address
                async with asyncio.timeout(5):
                    while not fleet.by_url(url_a).healthy:
                        await asyncio.sleep(0.05)
                more = [new_job_id("fleet2") for _ in range(4)]
                for job in more:
                    await app.client.post("/api/v1/tasks", json=agent_task(job, "[sleep 0.3] hi"), headers=app.auth())
                used = {(await wait_final(app, job))["result"]["instance"] for job in more}
                assert url_a in used and a_again.stats.messages > 0


async def test_mcp_client_send_message_and_finish_chat(standin: tuple[str, AgentZeroStandIn]) -> None:
    url, instance = standin
    client = AgentZeroMcpClient(url, KEY)
    try:
        first = await client.send_message("over mcp")
        assert first["response"] == "Done: over mcp" and first["chat_id"] in instance.contexts
        again = await client.send_message("and again", chat_id=first["chat_id"])
        assert again["chat_id"] == first["chat_id"]
        throwaway = await client.send_message("once", persistent=False)
        assert throwaway["chat_id"] == ""
        with pytest.raises(AgentZeroError) as failed:
            await client.send_message("[fail]")
        assert failed.value.code == "agent_error" and "MCP Chat message failed" in failed.value.message
        await client.finish_chat(first["chat_id"])
        assert first["chat_id"] not in instance.contexts
        with pytest.raises(AgentZeroError):
            await client.finish_chat(first["chat_id"])
    finally:
        await client.aclose()
    wrong = AgentZeroMcpClient(url, "wrong-token")
    with pytest.raises(AgentZeroError) as refused:
        await wrong.send_message("x")
    assert refused.value.code == "agent_auth_failed"
    await wrong.aclose()


async def test_a2a_client_sends_and_polls_until_done(standin: tuple[str, AgentZeroStandIn]) -> None:
    url, _ = standin
    client = AgentZeroA2AClient(url, KEY, poll_seconds=0.05)
    try:
        assert (await client.agent_card())["name"] == "Agent Zero"
        assert await client.run("[sleep 0.2] over a2a") == "Done: [sleep 0.2] over a2a"
        with pytest.raises(AgentZeroError) as failed:
            await client.run("[fail]")
        assert failed.value.code == "agent_error"
    finally:
        await client.aclose()
    wrong = AgentZeroA2AClient(url, "nope")
    with pytest.raises(AgentZeroError) as refused:
        await wrong.run("x")
    assert refused.value.code == "agent_auth_failed"
    await wrong.aclose()


async def test_mcp_and_a2a_transports(tmp_path: Path, nats_url: str, standin: tuple[str, AgentZeroStandIn]) -> None:
    url, _ = standin
    async with running_app(az_settings(tmp_path, nats_url, url)) as app:
        jobs = {}
        for transport in ("mcp", "a2a"):
            job = new_job_id(transport)
            body = {
                "job_id": job,
                "agent_definition": {"runtime": "agent-zero", "transport": transport},
                "task": {"type": "CHAT", "message": f"[sleep 0.3] via {transport}"},
            }
            assert (await app.client.post("/api/v1/tasks", json=body, headers=app.auth())).status_code == 202
            jobs[transport] = job
        mcp, a2a = [await wait_final(app, jobs[t]) for t in ("mcp", "a2a")]
        assert mcp["result"]["response"] == "Done: [sleep 0.3] via mcp" and mcp["result"]["context_id"]
        assert a2a["result"]["response"] == "Done: [sleep 0.3] via a2a" and a2a["result"]["context_id"] is None
        bad = {
            "job_id": new_job_id(),
            "agent_definition": {"runtime": "agent-zero", "transport": "smoke"},
            "task": {"type": "CHAT", "message": "x"},
        }
        refused = await app.client.post("/api/v1/tasks", json=bad, headers=app.auth())
        assert refused.status_code == 422 and "transport" in refused.json()["detail"]

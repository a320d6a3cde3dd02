"""Agent Zero sessions over /api/v2/agent: messages, limits, termination, idle sweep, access, modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage import session_store
from agent_fabric.storage.tables import agent_session_events
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.agent_zero_standin import AgentZeroStandIn, running_standin
from tests.support.flows import audit, auth_as, new_pod

KEY = "standin-key-0123456789"


@pytest.fixture
def standin() -> Iterator[tuple[str, AgentZeroStandIn]]:
    with running_standin(KEY) as served:
        yield served


def az_settings(backend: str, tmp_path: Path, nats_url: str, pg: str, redis: str, **agent_zero: Any) -> Any:
    cfg = AgentZeroSettings(api_key=KEY, poll_seconds=0.1, session_sweep_seconds=0.2, **agent_zero)
    if backend == "postgres":
        return make_settings(tmp_path, nats_url, database_url=pg, redis_url=redis, agent_zero=cfg)
    return make_settings(tmp_path, nats_url, agent_zero=cfg)


@pytest.fixture
async def az_app(
    backend: str,
    tmp_path: Path,
    nats_url: str,
    postgres_url: str,
    redis_url: str,
    standin: tuple[str, AgentZeroStandIn],
) -> AsyncIterator[RunningApp]:
    settings = az_settings(backend, tmp_path, nats_url, postgres_url, redis_url, url=standin[0])
    async with running_app(settings) as app:
        yield app


async def message(app: RunningApp, headers: dict[str, str], text: str, **body: Any) -> httpx.Response:
    return await app.client.post("/api/v2/agent/message", headers=headers, json={"message": text, **body})


async def configure(app: RunningApp, pod: str, **config: Any) -> None:
    response = await app.client.put(f"/api/v1/config/{pod}", headers=app.auth(), json=config)
    assert response.status_code == 200, response.text


async def event_rows(app: RunningApp, session_id: str) -> int:
    async with app.fabric.engine.connect() as conn:
        events = agent_session_events
        count = await conn.execute(select(func.count()).select_from(events).where(events.c.session_id == session_id))
    return int(count.scalar_one())


async def test_a_message_opens_a_session_and_follow_ups_reuse_its_chat(
    az_app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    _, instance = standin
    pod = new_pod()
    alice = auth_as(az_app, "alice", "pod_admin", pod)
    first = await message(az_app, alice, "hello")
    assert first.status_code == 200, first.text
    assert first.headers["x-fabric-mode"] == "SANDBOX" and first.json()["mode"] == "SANDBOX"
    body = first.json()
    assert body["response"] == "Done: hello" and body["session_started"] is True
    session_id, chat = body["session_id"], body["session"]["agent_zero_session_id"]
    assert chat in instance.contexts and body["session"]["message_count"] == 1

    again = await message(az_app, alice, "[sleep 0.4] and more", session_id=session_id)
    assert again.status_code == 200 and again.json()["session_started"] is False
    assert again.json()["session"]["agent_zero_session_id"] == chat
    assert instance.stats.messages == 3  # the priming message, then both messages in the same chat

    detail = await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=alice)
    assert detail.status_code == 200 and detail.headers["x-fabric-mode"] == "SANDBOX"
    view = detail.json()
    assert view["status"] == "idle" and view["message_count"] == 2 and view["user_id"] == "alice"
    assert view["pod_id"] == pod and view["mode"] == "SANDBOX" and view["instance_url"] == standin[0]
    listed = (await az_app.client.get("/api/v2/agent/sessions", headers=alice)).json()
    assert [s["id"] for s in listed["items"]] == [session_id] and listed["total"] == 1 and listed["mode"] == "SANDBOX"
    assert (await az_app.client.get("/api/v2/agent/sessions?status=terminated", headers=alice)).json()["total"] == 0

    # The session's log: both messages, progress while the agent worked, both answers, in order.
    kinds = [e.kind for e in await _events(az_app, session_id)]
    assert kinds[0] == "message" and kinds.count("response") == 2 and "progress" in kinds
    actions = [e["action"] for e in await audit(az_app, tenant_id=pod, session_id=session_id)]
    for action in ("session_started", "message_sent", "response_received"):
        assert action in actions, actions
    requests = await audit(az_app, tenant_id=pod, action="agent_api.request")
    assert len(requests) == 5 and all(e["actor"] == "alice" for e in requests)


async def _events(app: RunningApp, session_id: str) -> list[session_store.Event]:
    return await session_store.events_after(app.fabric.engine, session_id, 0)


async def test_max_sessions_per_pod_holds_under_concurrency(az_app: RunningApp) -> None:
    pod = new_pod()
    await configure(az_app, pod, agent_zero={"max_sessions": 3})
    bob = auth_as(az_app, "bob", "pod_admin", pod)
    answers = await asyncio.gather(*(message(az_app, bob, f"[sleep 0.3] n{i}") for i in range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 3
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["code"] == "max_sessions" and refused.headers["content-type"].startswith(
        "application/problem+json"
    )
    ended = next(a for a in answers if a.status_code == 200).json()["session_id"]
    terminated = await az_app.client.post(f"/api/v2/agent/sessions/{ended}/terminate", headers=bob)
    assert terminated.status_code == 200
    assert (await message(az_app, bob, "room again")).status_code == 200  # a terminated session frees its place


async def test_a_busy_session_refuses_a_second_message(az_app: RunningApp) -> None:
    pod = new_pod()
    carol = auth_as(az_app, "carol", "pod_admin", pod)
    session_id = (await message(az_app, carol, "start")).json()["session_id"]
    slow = asyncio.create_task(message(az_app, carol, "[sleep 1] long", session_id=session_id))
    async with asyncio.timeout(5):  # wait until the slow message holds the session
        while (await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=carol)).json()[
            "status"
        ] != "active":
            await asyncio.sleep(0.02)
    busy = await message(az_app, carol, "me too", session_id=session_id)
    assert busy.status_code == 409 and busy.json()["code"] == "session_busy"
    assert (await slow).status_code == 200
    assert (await message(az_app, carol, "now", session_id=session_id)).status_code == 200


async def test_terminate_deletes_the_chat_and_the_event_log(
    az_app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    _, instance = standin
    pod = new_pod()
    dave = auth_as(az_app, "dave", "pod_admin", pod)
    body = (await message(az_app, dave, "hi")).json()
    session_id, chat = body["session_id"], body["session"]["agent_zero_session_id"]
    assert await event_rows(az_app, session_id) >= 2
    ended = await az_app.client.post(f"/api/v2/agent/sessions/{session_id}/terminate", headers=dave)
    assert ended.status_code == 200 and ended.json()["status"] == "terminated" and ended.json()["terminated_at"]
    assert chat not in instance.contexts  # api_terminate_chat reached Agent Zero
    assert await event_rows(az_app, session_id) == 0
    again = await az_app.client.post(f"/api/v2/agent/sessions/{session_id}/terminate", headers=dave)
    assert again.status_code == 409 and again.json()["code"] == "session_terminated"
    late = await message(az_app, dave, "still there?", session_id=session_id)
    assert late.status_code == 409 and late.json()["code"] == "session_terminated"
    kept = (await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=dave)).json()
    assert kept["status"] == "terminated" and kept["message_count"] == 1  # the row stays for the audit trail
    entries = await audit(az_app, tenant_id=pod, action="session_terminated")
    assert entries and entries[0]["session_id"] == session_id and entries[0]["request"]["reason"] == "manual"


async def test_idle_sessions_are_ended_by_the_sweep(az_app: RunningApp, standin: tuple[str, AgentZeroStandIn]) -> None:
    _, instance = standin
    pod = new_pod()
    await configure(az_app, pod, agent_zero={"session_idle_timeout_seconds": 0.5})
    erin = auth_as(az_app, "erin", "pod_admin", pod)
    body = (await message(az_app, erin, "[sleep 0.7] longer than the idle timeout")).json()
    assert body["session"]["status"] == "idle"  # a running message is not idle, however long it takes
    session_id, chat = body["session_id"], body["session"]["agent_zero_session_id"]

    async def status() -> str:
        return str((await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=erin)).json()["status"])

    async with asyncio.timeout(5):
        while await status() != "terminated":
            await asyncio.sleep(0.1)
    assert chat not in instance.contexts and await event_rows(az_app, session_id) == 0
    swept = await audit(az_app, tenant_id=pod, action="session_terminated")
    assert swept[0]["actor"] == "system" and swept[0]["request"]["reason"] == "idle"


async def test_only_the_pods_own_administrators_get_in(az_app: RunningApp) -> None:
    pod, other = new_pod(), new_pod()
    owner = auth_as(az_app, "owner", "pod_admin", pod)
    session_id = (await message(az_app, owner, "mine")).json()["session_id"]
    c = az_app.client
    stranger = auth_as(az_app, "mallory", "pod_admin", other)
    assert (await c.get(f"/api/v2/agent/sessions/{session_id}", headers=stranger)).status_code == 404
    assert (await message(az_app, stranger, "x", session_id=session_id)).status_code == 404
    assert (await c.post(f"/api/v2/agent/sessions/{session_id}/terminate", headers=stranger)).status_code == 404
    crossing = await c.get(f"/api/v2/agent/sessions/{session_id}?tenant_id={pod}", headers=stranger)
    assert crossing.status_code == 403
    for role in ("viewer", "agent"):
        refused = await message(az_app, auth_as(az_app, "v", role, pod), "let me in")
        assert refused.status_code == 403, role
    admin = await c.get(f"/api/v2/agent/sessions/{session_id}?tenant_id={pod}", headers=az_app.auth())
    assert admin.status_code == 200 and admin.json()["id"] == session_id
    assert (await message(az_app, {}, "anonymous")).status_code == 401
    bad = await message(az_app, owner, "")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    denied = await audit(az_app, action="access_denied", tenant_id=pod)
    assert {e["actor"] for e in denied} >= {"v"}


async def test_live_pods_need_mfa_and_budget(az_app: RunningApp) -> None:
    pod = new_pod()
    await configure(az_app, pod, mode="LIVE", budget={"max_cost_usd": 0})
    plain = await message(az_app, auth_as(az_app, "frank", "pod_admin", pod), "hi")
    assert plain.status_code == 403 and plain.json()["code"] == "mfa_required"
    mfa = az_app.fabric.tokens.issue(role="pod_admin", subject="frank", tenant_id=pod, amr=["mfa"])
    broke = await message(az_app, {"Authorization": f"Bearer {mfa}"}, "hi")
    assert broke.status_code == 402 and broke.json()["code"] == "budget_exceeded"
    assert (await az_app.client.get("/api/v2/agent/sessions", headers={"Authorization": f"Bearer {mfa}"})).json()[
        "total"
    ] == 0  # refused before a session was opened
    await configure(az_app, pod, mode="LIVE", budget={"max_cost_usd": 10})
    ok = await message(az_app, {"Authorization": f"Bearer {mfa}"}, "hi")
    assert ok.status_code == 200 and ok.headers["x-fabric-mode"] == "LIVE" and ok.json()["mode"] == "LIVE"
    assert [e["action"] for e in await audit(az_app, tenant_id=pod, action="budget_exceeded")] == ["budget_exceeded"]


async def test_sandbox_pods_use_the_sandbox_instances_and_messages_cost(tmp_path: Path, nats_url: str) -> None:
    with running_standin(KEY) as (live_url, live), running_standin(KEY) as (sandbox_url, sandbox):
        settings = make_settings(
            tmp_path,
            nats_url,
            agent_zero=AgentZeroSettings(
                url=live_url, sandbox_url=sandbox_url, api_key=KEY, sandbox_api_key=KEY, cost_per_message_usd=0.25
            ),
        )
        async with running_app(settings) as app:
            pod, live_pod = new_pod(), new_pod()
            await configure(app, live_pod, mode="LIVE")
            played = await message(app, auth_as(app, "gina", "pod_admin", pod), "in the sandbox")
            assert played.status_code == 200 and played.json()["session"]["instance_url"] == sandbox_url
            assert played.json()["session"]["estimated_cost_usd"] == 0.25
            mfa = app.fabric.tokens.issue(role="pod_admin", subject="gina", tenant_id=live_pod, amr=["mfa"])
            real = await message(app, {"Authorization": f"Bearer {mfa}"}, "for real")
            assert real.status_code == 200 and real.json()["session"]["instance_url"] == live_url
            assert sandbox.stats.messages == 2 and live.stats.messages == 2
            answered = await audit(app, tenant_id=pod, action="response_received")
            assert answered[0]["cost_usd"] == 0.25 and answered[0]["mode"] == "SANDBOX"

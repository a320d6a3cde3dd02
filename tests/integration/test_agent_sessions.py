"""Agent Zero sessions over /api/v2/agent: messages, limits, termination, idle sweep, access, modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage import session_store
from agent_fabric.storage.tables import agent_session_events
from tests.conftest import RunningApp, make_settings, running_app
from tests.support.agent_zero_standin import AgentZeroStandIn, running_standin
from tests.support.asgi_server import serving
from tests.support.flows import audit, auth_as, new_pod, until
from tests.support.nats_server import free_port

KEY = "standin-key-0123456789"


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
        # The winner marks the row first, then deletes the chat and the event log: wait for both.
        while chat in instance.contexts or await event_rows(az_app, session_id):
            await asyncio.sleep(0.05)
    swept = await audit(az_app, tenant_id=pod, action="session_terminated")
    assert swept[0]["actor"] == "system" and swept[0]["request"]["reason"] == "idle"


async def test_agent_failures_are_reported_and_the_session_goes_on(az_app: RunningApp) -> None:
    pod = new_pod()
    ivy = auth_as(az_app, "ivy", "pod_admin", pod)
    session_id = (await message(az_app, ivy, "hi")).json()["session_id"]
    failed = await message(az_app, ivy, "[fail] please", session_id=session_id)
    assert failed.status_code == 502 and failed.json()["code"] == "agent_error"
    assert "LLM provider failed" in failed.json()["detail"]
    view = (await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=ivy)).json()
    assert view["status"] == "error" and "LLM provider failed" in view["last_error"]
    assert (await message(az_app, ivy, "again", session_id=session_id)).status_code == 200
    assert "error" in [e.kind for e in await _events(az_app, session_id)]
    assert [e["action"] for e in await audit(az_app, tenant_id=pod, action="message_failed")] == ["message_failed"]


async def test_a_session_agent_zero_never_saw_frees_its_place(tmp_path: Path, nats_url: str) -> None:
    down = AgentZeroSettings(url=f"http://127.0.0.1:{free_port()}", api_key=KEY, retries=0)
    async with running_app(make_settings(tmp_path, nats_url, agent_zero=down)) as app:
        pod = new_pod()
        await configure(app, pod, agent_zero={"max_sessions": 1})
        jack = auth_as(app, "jack", "pod_admin", pod)
        for _ in range(2):  # not 429 the second time: the first session was ended
            refused = await message(app, jack, "anyone there?")
            assert refused.status_code == 503 and refused.json()["code"] == "agent_unreachable"
        listed = (await app.client.get("/api/v2/agent/sessions", headers=jack)).json()["items"]
        assert [s["status"] for s in listed] == ["terminated", "terminated"]


async def test_a_pod_no_instance_serves_is_told_so(tmp_path: Path, nats_url: str) -> None:
    async with running_app(make_settings(tmp_path, nats_url)) as app:
        kim = auth_as(app, "kim", "pod_admin", new_pod())
        for refused in (
            await message(app, kim, "hello?"),
            await app.client.post("/api/v2/agent/sessions", headers=kim, json={}),
        ):
            assert refused.status_code == 409 and refused.json()["code"] == "runtime_unavailable"
            assert "POST /api/v2/agent/instances" in refused.json()["detail"]
        assert (await app.client.get("/api/v2/agent/sessions", headers=kim)).json()["items"] == []


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


# -- the WebSocket, over a real server --


def ws_base(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1)


async def close_code(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with connect(url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def frames_until(ws: Any, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not seen or not done(seen[-1]):
            seen.append(orjson.loads(await ws.recv()))
    return seen


def is_response(frame: dict[str, Any]) -> bool:
    return frame.get("kind") == "response"


async def test_websocket_refuses_with_close_codes(az_app: RunningApp) -> None:
    pod, other, live = new_pod(), new_pod(), new_pod()
    session_id = (await message(az_app, auth_as(az_app, "o", "pod_admin", pod), "mine")).json()["session_id"]
    await configure(az_app, live, mode="LIVE")
    live_mfa = az_app.fabric.tokens.issue(role="pod_admin", subject="l", tenant_id=live, amr=["mfa"])
    live_session = (await message(az_app, {"Authorization": f"Bearer {live_mfa}"}, "live")).json()["session_id"]
    async with serving(az_app.app) as base:
        url = f"{ws_base(base)}/ws/agent/{session_id}/"
        assert (await close_code(url))[0] == 4401
        assert (await close_code(f"{url}?token=not-a-jwt"))[0] == 4401
        assert (await close_code(url, auth_as(az_app, "v", "viewer", pod)))[0] == 4403
        assert (await close_code(url, auth_as(az_app, "m", "pod_admin", other)))[0] == 4404
        assert (await close_code(f"{url}?tenant_id={pod}", auth_as(az_app, "m", "pod_admin", other)))[0] == 4403
        unknown = f"{ws_base(base)}/ws/agent/00000000-0000-0000-0000-000000000000/"
        assert (await close_code(unknown, auth_as(az_app, "o", "pod_admin", pod)))[0] == 4404
        live_url = f"{ws_base(base)}/ws/agent/{live_session}/"
        code, reason = await close_code(live_url, auth_as(az_app, "l", "pod_admin", live))
        assert code == 4403 and "mfa" in reason
    denied = await audit(az_app, action="access_denied", tenant_id=pod)
    assert any(e["request"]["path"] == f"/ws/agent/{session_id}/" for e in denied)


async def test_websocket_sends_streams_and_resumes_without_gaps(az_app: RunningApp) -> None:
    pod = new_pod()
    token = az_app.fabric.tokens.issue(role="pod_admin", subject="ws", tenant_id=pod)
    opened = (await message(az_app, {"Authorization": f"Bearer {token}"}, "open")).json()
    session_id, seen_up_to = opened["session_id"], opened["session"]["last_event_id"]
    async with serving(az_app.app) as base:
        url = f"{ws_base(base)}/ws/agent/{session_id}/?token={token}&last_event_id={seen_up_to}"
        async with connect(url) as ws:
            hello = orjson.loads(await ws.recv())
            assert hello["type"] == "session" and hello["mode"] == "SANDBOX" and hello["session"]["id"] == session_id
            await ws.send(orjson.dumps({"type": "message", "message": "[sleep 0.6] over the socket"}).decode())
            streamed = await frames_until(ws, is_response)
            kinds = [f["kind"] for f in streamed]
            assert kinds[0] == "message" and kinds[-1] == "response" and "progress" in kinds
            assert [f["id"] for f in streamed] == list(range(seen_up_to + 1, seen_up_to + 1 + len(streamed)))
            assert streamed[-1]["data"]["response"] == "Done: [sleep 0.6] over the socket"

            # A refusal comes back as an error frame, and the socket stays open.
            await ws.send("not json")
            assert orjson.loads(await ws.recv())["code"] == "invalid_request"

            # Leave in the middle of the next answer ...
            await ws.send(orjson.dumps({"type": "message", "message": "[sleep 1] second"}).decode())
            early = await frames_until(ws, lambda f: f.get("kind") == "progress")
            last = early[-1]["id"]
        async with asyncio.timeout(10):  # ... the answer comes while no one is connected
            while (await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=bearer(token))).json()[
                "status"
            ] != "idle":
                await asyncio.sleep(0.05)
        stored = [e.seq for e in await _events(az_app, session_id) if e.seq > last]
        async with connect(f"{url.split('&')[0]}&last_event_id={last}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "session"
            missed = await frames_until(ws, is_response)
            assert [f["id"] for f in missed] == stored  # exactly what was missed, nothing twice
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await ws.recv()


async def test_websocket_sees_messages_posted_over_http_and_the_end(az_app: RunningApp) -> None:
    pod = new_pod()
    henry = auth_as(az_app, "henry", "pod_admin", pod)
    session_id = (await message(az_app, henry, "open")).json()["session_id"]
    async with serving(az_app.app) as base:
        # An id past the log means "I have everything so far": only live events follow.
        url = f"{ws_base(base)}/ws/agent/{session_id}/?last_event_id=1000000"
        async with connect(url, additional_headers=az_app.auth()) as ws:  # an admin, in the session's POD
            assert orjson.loads(await ws.recv())["type"] == "session"
            posted = asyncio.create_task(message(az_app, henry, "[sleep 0.4] over http", session_id=session_id))
            live = await frames_until(ws, is_response)
            assert (await posted).status_code == 200
            assert [f["kind"] for f in live][0] == "message" and live[-1]["data"]["response"].endswith("over http")
            ended = await az_app.client.post(f"/api/v2/agent/sessions/{session_id}/terminate", headers=henry)
            assert ended.status_code == 200
            last = await frames_until(ws, lambda f: f.get("kind") == "terminated")
            assert last[-1]["data"]["reason"] == "manual"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    actions = {e["action"] for e in await audit(az_app, tenant_id=pod, session_id=session_id)}
    assert {"agent_ws.connected", "agent_ws.disconnected", "session_terminated"} <= actions


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_session_ends_for_its_sender_when_terminated_mid_answer(
    az_app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    pod = new_pod()
    kim = auth_as(az_app, "kim", "pod_admin", pod)
    session_id = (await message(az_app, kim, "open")).json()["session_id"]
    running = asyncio.create_task(message(az_app, kim, "[sleep 3] long job", session_id=session_id))
    async with asyncio.timeout(5):
        while (await az_app.client.get(f"/api/v2/agent/sessions/{session_id}", headers=kim)).json()[
            "status"
        ] != "active":
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert (await az_app.client.post(f"/api/v2/agent/sessions/{session_id}/terminate", headers=kim)).status_code == 200
    cut = await running
    assert cut.status_code == 409 and cut.json()["code"] == "session_terminated"
    assert await event_rows(az_app, session_id) == 0  # what the sender wrote afterwards is gone too


async def test_a_session_stays_in_the_mode_it_was_opened_in(az_app: RunningApp) -> None:
    pod = new_pod()
    session_id = (await message(az_app, auth_as(az_app, "lee", "pod_admin", pod), "sandbox")).json()["session_id"]
    await configure(az_app, pod, mode="LIVE")
    mfa = az_app.fabric.tokens.issue(role="pod_admin", subject="lee", tenant_id=pod, amr=["mfa"])
    moved = await message(az_app, bearer(mfa), "now live", session_id=session_id)
    assert moved.status_code == 409 and moved.json()["code"] == "session_mode_changed"


async def test_two_replicas_share_sessions_events_and_the_sweep(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, AgentZeroStandIn]
) -> None:
    url, instance = standin
    settings = [
        az_settings("postgres", tmp_path / name, nats_url, postgres_url, redis_url, url=url) for name in ("a", "b")
    ]
    async with running_app(settings[0]) as a, running_app(settings[1]) as b:
        pod = new_pod()
        await configure(a, pod, agent_zero={"session_idle_timeout_seconds": 3})
        await until(lambda: b.fabric.governance.tenants.version_of(pod) >= 1, what="config on replica b")
        mona = auth_as(a, "mona", "pod_admin", pod)
        session_id = (await message(b, mona, "open on b")).json()["session_id"]
        async with serving(a.app) as base:
            async with connect(f"{ws_base(base)}/ws/agent/{session_id}/", additional_headers=mona) as ws:
                assert orjson.loads(await ws.recv())["type"] == "session"
                replayed = await frames_until(ws, is_response)  # the first message, from the log
                posted = asyncio.create_task(message(b, mona, "[sleep 0.3] via b", session_id=session_id))
                live = await frames_until(ws, is_response)  # sent through replica b, relayed by a
                assert (await posted).status_code == 200
                assert live[0]["id"] == replayed[-1]["id"] + 1 and live[-1]["data"]["response"].endswith("via b")
                ended = await frames_until(ws, lambda f: f.get("kind") == "terminated", timeout=10)
                assert ended[-1]["data"]["reason"] == "idle"
        assert instance.stats.messages == 3 and not instance.contexts  # the swept session's chat was deleted
        entries = await audit(a, tenant_id=pod, action="session_terminated")
        assert len(entries) == 1  # both replicas sweep; one conditional UPDATE wins


async def test_a_session_opened_empty_streams_its_first_answer(
    az_app: RunningApp, standin: tuple[str, AgentZeroStandIn]
) -> None:
    _, instance = standin
    pod = new_pod()
    nina = auth_as(az_app, "nina", "pod_admin", pod)
    opened = await az_app.client.post("/api/v2/agent/sessions", headers=nina, json={"agent_profile": "researcher"})
    assert opened.status_code == 201 and opened.headers["x-fabric-mode"] == "SANDBOX"
    session = opened.json()
    assert session["status"] == "idle" and session["agent_zero_session_id"] is None and session["last_event_id"] == 0
    async with (
        serving(az_app.app) as base,
        connect(f"{ws_base(base)}/ws/agent/{session['id']}/", additional_headers=nina) as ws,
    ):
        assert orjson.loads(await ws.recv())["type"] == "session"
        await ws.send(orjson.dumps({"type": "message", "message": "[sleep 0.5] first"}).decode())
        streamed = await frames_until(ws, is_response)
    assert [f["id"] for f in streamed] == list(range(1, len(streamed) + 1))
    assert streamed[0]["kind"] == "message" and "progress" in [f["kind"] for f in streamed]
    view = (await az_app.client.get(f"/api/v2/agent/sessions/{session['id']}", headers=nina)).json()
    assert view["message_count"] == 1 and instance.contexts[view["agent_zero_session_id"]].profile == "researcher"

"""An Agent Zero instance pointed at the gateway with an instance key: its calls are charged to the
tenant's and agent's budgets, and to the session answering on that instance when there is one,
whose WebSocket also sees the call's tokens as they stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect

from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage.tables import agent_sessions
from tests.conftest import RunningApp
from tests.integration.conftest import STANDIN_KEY
from tests.integration.llm_fixtures import gateway_replica
from tests.support.flows import audit, auth_as, new_pod
from tests.support.nats_server import free_port
from tests.support.openai_standin import running_openai_standin

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "plan"}], "max_tokens": 100}
COST = (11 * 0.15 + 100 * 0.6) / 1000  # prompt: 10 + one word; completion: max_tokens
STREAMED_COST = (11 * 0.15 + 3 * 0.6) / 1000


async def _answering(app: Any, pod: str) -> list[Any]:
    async with app.fabric.engine.connect() as conn:
        query = select(agent_sessions).where(agent_sessions.c.tenant_id == pod, agent_sessions.c.busy.is_(True))
        return list(await conn.execute(query))


async def _session_cost(app: Any, session_id: str) -> float:
    async with app.fabric.engine.connect() as conn:
        query = select(agent_sessions.c.estimated_cost_usd).where(agent_sessions.c.id == session_id)
        return float((await conn.execute(query)).scalar_one())


@pytest.fixture
async def fabric(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, Any]
) -> AsyncIterator[tuple[RunningApp, str]]:
    """A replica with the gateway in front of the OpenAI stand-in and the Agent Zero stand-in
    behind it, on Postgres + Redis; (app, its base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    agent_zero = AgentZeroSettings(url=standin[0], api_key=STANDIN_KEY, poll_seconds=0.1)
    with running_openai_standin() as (upstream, _):
        async with gateway_replica(
            tmp_path, nats_url, upstream, f"{base}/v1", port, postgres_url, redis_url, agent_zero=agent_zero
        ) as app:
            yield app, base


async def test_instance_key_calls_belong_to_the_answering_session(fabric: tuple[RunningApp, str]) -> None:
    app, base = fabric
    pod = new_pod()
    alice = auth_as(app, "alice", "pod_admin", pod)
    asked = asyncio.create_task(
        app.client.post("/api/v2/agent/message", headers=alice, json={"message": "[sleep 6] plan it"})
    )
    answering: list[Any] = []
    async with asyncio.timeout(30):
        while not (len(answering) == 1 and answering[0].instance_url is not None):
            await asyncio.sleep(0.05)
            answering = await _answering(app, pod)
    session = answering[0]
    minted = await app.client.post(
        f"/api/v1/llm/keys?tenant_id={pod}",
        headers=app.auth(),
        json={"instance_id": "a0-main", "agent": "agent-zero", "instance_url": session.instance_url},
    )
    assert minted.status_code == 201, minted.text
    headers = {"Authorization": f"Bearer {minted.json()['api_key']}"}
    token = app.fabric.tokens.issue(role="pod_admin", subject="alice", tenant_id=pod)
    url = f"{base.replace('http', 'ws', 1)}/ws/agent/{session.id}/?token={token}"
    async with connect(url) as ws, httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert orjson.loads(await ws.recv())["type"] == "session"
        streamed = {**BODY, "stream": True, "max_tokens": 3}
        async with http.stream("POST", "/v1/chat/completions", headers=headers, json=streamed) as answer:
            assert answer.status_code == 200
            [line async for line in answer.aiter_lines()]
        tokens: list[str] = []
        async with asyncio.timeout(15):
            while len(tokens) < 3:
                frame = orjson.loads(await ws.recv())
                if frame.get("kind") == "token":
                    tokens.append(frame["data"]["text"])
        assert tokens == ["w0 ", "w1 ", "w2 "]
        called = await http.post("/v1/chat/completions", headers=headers, json=BODY)
        assert called.status_code == 200, called.text
    reply = await asyncio.wait_for(asked, 60)
    assert reply.status_code == 200, reply.text
    assert abs(await _session_cost(app, session.id) - COST - STREAMED_COST) < 1e-9
    entries = await audit(app, action="llm.call", tenant_id=pod)
    assert len(entries) == 2 and {e["session_id"] for e in entries} == {session.id}
    assert all(e["request"]["key"] == "instance" for e in entries)
    # Idle now: a call belongs to no session and counts on the budgets only.
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.post("/v1/chat/completions", headers=headers, json=BODY)).status_code == 200
    entries = await audit(app, action="llm.call", tenant_id=pod)
    assert len(entries) == 3 and sum(1 for e in entries if e["session_id"]) == 2
    await app.fabric.governance.budgets.fold()
    agent = (await app.client.get(f"/api/v1/budgets/agent:agent-zero?tenant_id={pod}", headers=app.auth())).json()
    assert agent["used"]["tokens"] == 2 * 111 + 14


async def test_a_call_made_while_two_sessions_answer_is_split_between_them(fabric: tuple[RunningApp, str]) -> None:
    app, base = fabric
    pod = new_pod()
    asked = [
        asyncio.create_task(
            app.client.post(
                "/api/v2/agent/message",
                headers=auth_as(app, user, "pod_admin", pod),
                json={"message": "[sleep 6] go"},
            )
        )
        for user in ("alice", "bob")
    ]
    answering: list[Any] = []
    async with asyncio.timeout(30):
        while not (len(answering) == 2 and all(s.instance_url for s in answering)):
            await asyncio.sleep(0.05)
            answering = await _answering(app, pod)
    assert answering[0].instance_url == answering[1].instance_url
    minted = await app.client.post(
        f"/api/v1/llm/keys?tenant_id={pod}",
        headers=app.auth(),
        json={"instance_id": "a0-main", "agent": "agent-zero", "instance_url": answering[0].instance_url},
    )
    assert minted.status_code == 201, minted.text
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"Authorization": f"Bearer {minted.json()['api_key']}"}
        assert (await http.post("/v1/chat/completions", headers=headers, json=BODY)).status_code == 200
    for reply in await asyncio.gather(*asked):
        assert reply.status_code == 200, reply.text
    costs = [await _session_cost(app, s.id) for s in answering]
    assert all(abs(c - COST / 2) < 1e-9 for c in costs), costs  # equal shares, adding up to the call
    [entry] = await audit(app, action="llm.call", tenant_id=pod)
    assert entry["session_id"] is None
    assert entry["request"]["shared_by_sessions"] == sorted(s.id for s in answering)

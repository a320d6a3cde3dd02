"""An Agent Zero instance pointed at the gateway with an instance key: its calls are charged to the
tenant's and agent's budgets, and to the session answering on that instance when there is one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from agent_fabric.settings import AgentZeroSettings
from agent_fabric.storage.tables import agent_sessions
from tests.integration.conftest import STANDIN_KEY
from tests.integration.llm_fixtures import gateway_replica
from tests.support.flows import audit, auth_as, new_pod
from tests.support.nats_server import free_port
from tests.support.openai_standin import running_openai_standin


async def _answering(app: Any, pod: str) -> list[Any]:
    async with app.fabric.engine.connect() as conn:
        query = select(agent_sessions).where(agent_sessions.c.tenant_id == pod, agent_sessions.c.busy.is_(True))
        return list(await conn.execute(query))


async def test_instance_key_calls_are_charged_to_the_answering_session(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, standin: tuple[str, Any]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    agent_zero = AgentZeroSettings(url=standin[0], api_key=STANDIN_KEY, poll_seconds=0.1)
    with running_openai_standin() as (upstream, _):
        async with gateway_replica(
            tmp_path, nats_url, upstream, f"{base}/v1", port, postgres_url, redis_url, agent_zero=agent_zero
        ) as app:
            pod = new_pod()
            alice = auth_as(app, "alice", "pod_admin", pod)
            asked = asyncio.create_task(
                app.client.post("/api/v2/agent/message", headers=alice, json={"message": "[sleep 3] plan it"})
            )
            answering: list[Any] = []

            async def one_answering() -> bool:
                answering[:] = await _answering(app, pod)
                return len(answering) == 1 and answering[0].instance_url is not None

            async with asyncio.timeout(30):
                while not await one_answering():
                    await asyncio.sleep(0.05)
            session = answering[0]
            minted = await app.client.post(
                f"/api/v1/llm/keys?tenant_id={pod}",
                headers=app.auth(),
                json={"instance_id": "a0-main", "agent": "agent-zero", "instance_url": session.instance_url},
            )
            assert minted.status_code == 201, minted.text
            key = minted.json()["api_key"]
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "plan"}], "max_tokens": 100}
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                called = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
            assert called.status_code == 200, called.text
            cost = (11 * 0.15 + 100 * 0.6) / 1000
            reply = await asyncio.wait_for(asked, 60)
            assert reply.status_code == 200, reply.text
            async with app.fabric.engine.connect() as conn:
                charged = (
                    await conn.execute(
                        select(agent_sessions.c.estimated_cost_usd).where(agent_sessions.c.id == session.id)
                    )
                ).scalar_one()
            assert abs(charged - cost) < 1e-9
            entries = await audit(app, action="llm.call", tenant_id=pod)
            assert len(entries) == 1 and entries[0]["session_id"] == session.id
            assert entries[0]["request"]["key"] == "instance"
            # Idle now: a call charges no session, only the budgets.
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
            entries = await audit(app, action="llm.call", tenant_id=pod)
            assert len(entries) == 2 and sum(1 for e in entries if e["session_id"]) == 1
            await app.fabric.governance.budgets.fold()
            agent = (
                await app.client.get(f"/api/v1/budgets/agent:agent-zero?tenant_id={pod}", headers=app.auth())
            ).json()
            assert agent["used"]["tokens"] == 2 * 111

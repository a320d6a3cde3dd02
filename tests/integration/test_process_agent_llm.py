"""A process agent's model calls are its task's (issue 16): the example `chat` agent, a real
process started by the fabric (in its network sandbox where bubblewrap works), calls the fabric's
LLM gateway with the key its task was handed; the gateway meters the call to the task.

Real NATS and Postgres; the fabric serves real HTTP (the gateway's /v1) on its own port; the
provider is the OpenAI stand-in. The agent reports no usage itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from agent_fabric.agents.isolation import GATEWAY_PORT
from agent_fabric.llm_gateway.keys import key_hash
from agent_fabric.storage.llm_tables import llm_calls, llm_keys
from tests.conftest import RunningApp, new_job_id, running_app
from tests.integration.llm_fixtures import llm_settings
from tests.integration.test_process_agents import process_settings
from tests.support.asgi_server import serving
from tests.support.flows import audit, new_pod, task_status
from tests.support.nats_server import free_port
from tests.support.openai_standin import UPSTREAM_KEY, OpenAIStandIn, running_openai_standin
from tests.support.process_agents import package, process_task, register


@pytest.fixture
def openai() -> Iterator[tuple[str, OpenAIStandIn]]:
    with running_openai_standin() as served:
        yield served


@pytest.fixture
async def llm_proc_app(
    tmp_path: Path, nats_url: str, postgres_url: str, openai: tuple[str, OpenAIStandIn]
) -> AsyncIterator[tuple[RunningApp, str]]:
    """A fabric with process agents and the gateway, its HTTP on a port of its own; (app, its URL)."""
    (tmp_path / "packages").mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = process_settings(
        tmp_path, nats_url, postgres_url, None, llm=llm_settings(openai[0], f"{base}/v1"), http_port=port
    )
    async with running_app(settings) as app, serving(app.app, port):
        yield app, base


async def test_a_process_agents_model_calls_are_its_tasks(
    llm_proc_app: tuple[RunningApp, str], openai: tuple[str, OpenAIStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, base = llm_proc_app
    standin = openai[1]
    # Note each key the fabric mints for a task (the real call, observed): only the agent gets it.
    minted: list[dict[str, str]] = []
    access = app.fabric.task_llm
    mint = access.endpoint_for

    async def noting(spec: Any, timeout_seconds: float) -> dict[str, str]:
        endpoint = await mint(spec, timeout_seconds)
        minted.append(endpoint)
        return endpoint

    monkeypatch.setattr(access, "endpoint_for", noting)

    pod = new_pod()
    agent_id = await register(app, package(app.fabric.settings.state_dir / "packages", "chat"), pod)
    job = new_job_id("chat")
    body = {**process_task(job, agent_id, "ask", {"prompt": "Say hello.", "max_tokens": 5}), "tenant_id": pod}
    response = await app.client.post("/api/v1/tasks", headers=app.auth(), json=body)
    assert response.status_code == 202, response.text
    done = await task_status(app, job, {"completed", "failed"}, pod, timeout=90)
    assert done["status"] == "completed", done
    assert done["result"] == {"answer": "w0 w1 w2 w3 w4 ", "model": "gpt-4o-mini"}

    # One key, minted for this task; the agent's call reached the upstream through the gateway
    # (which swapped it for the provider's key).
    assert len(minted) == 1 and minted[0]["OPENAI_BASE_URL"] == f"{base}/v1"
    task_key = minted[0]["OPENAI_API_KEY"]
    calls_upstream = [r for r in standin.requests if r["path"] == "/v1/chat/completions"]
    assert len(calls_upstream) == 1 and calls_upstream[0]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert calls_upstream[0]["body"]["messages"] == [{"role": "user", "content": "Say hello."}]
    async with app.fabric.engine.connect() as conn:
        keys = list(await conn.execute(select(llm_keys).where(llm_keys.c.key_hash == key_hash(task_key))))
        rows = list(await conn.execute(select(llm_calls).where(llm_calls.c.tenant_id == pod)))
    assert len(keys) == 1 and keys[0].job_id == job and keys[0].kind == "task" and keys[0].agent_label == agent_id

    # Metered to the task: its llm_calls row and llm.call audit entry name the job.
    assert len(rows) == 1
    call = rows[0]
    assert call.job_id == job and call.key_kind == "task" and call.outcome == "ok" and call.agent_label == agent_id
    assert call.total_tokens == 12 + 5 and call.cost_usd > 0  # prompt: 10 + 2 words; completion: max_tokens
    entries = await audit(app, action="llm.call", tenant_id=pod)
    assert len(entries) == 1 and entries[0]["request"]["job_id"] == job and entries[0]["request"]["key"] == "task"

    # The task's usage holds the gateway's count (the agent reported none).
    usage = done["usage"]
    assert usage["gateway_tokens"] == call.total_tokens and usage["tokens"] == call.total_tokens
    assert usage["gateway_cost_usd"] == pytest.approx(call.cost_usd)
    assert usage["cost_usd"] == pytest.approx(call.cost_usd)

    # Where the agent runs in a network namespace, it reached the gateway through the sandbox's
    # relay, not the egress proxy (which audits every request it carries).
    health = (await app.client.get(f"/api/v1/agents/{agent_id}/health", headers=app.auth())).json()
    if "network namespace" in (health.get("isolation") or ""):
        relayed = app.fabric.processes.lifecycle.model_base_url(agent_id, f"{base}/v1")
        assert relayed == f"http://127.0.0.1:{GATEWAY_PORT}/v1"
        assert await audit(app, action="agent.egress", tenant_id=pod) == []

    # The key died with the task.
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        after = await http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {task_key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "again?"}]},
        )
    assert after.status_code == 401, after.text
    assert len([r for r in standin.requests if r["path"] == "/v1/chat/completions"]) == 1

"""A task's model calls through the gateway, across replicas: attribution, a LIVE budget cut in
mid-run, tokens on the task's SSE stream while the completion is still streaming, keys revoked.

Real NATS, Postgres and Redis; two fabric replicas behind a round-robin load balancer (each new
connection goes to the other replica), the provider being the OpenAI stand-in. The task is the
builtin `chat` task, which asks for its model endpoint the way every driver does
(RunContext.model_endpoint) and calls it over HTTP like an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from agent_fabric.storage.llm_tables import llm_calls, llm_keys
from agent_fabric.tasks import TaskSpec
from tests.conftest import RunningApp
from tests.integration.llm_fixtures import gateway_replica, set_tenant
from tests.support.flows import audit, new_pod, task, task_status, until
from tests.support.nats_server import free_port
from tests.support.openai_standin import OpenAIStandIn, running_openai_standin
from tests.support.round_robin import round_robin

Replicas = tuple[RunningApp, RunningApp, str]


@pytest.fixture
def openai() -> Iterator[tuple[str, OpenAIStandIn]]:
    with running_openai_standin() as served:
        yield served


@pytest.fixture
async def replicas(
    tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, openai: tuple[str, Any]
) -> AsyncIterator[Replicas]:
    """(replica a, replica b, the load balancer's base URL) on one Postgres, NATS and Redis."""
    port_a, port_b, port_lb = free_port(), free_port(), free_port()
    public = f"http://127.0.0.1:{port_lb}/v1"
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            gateway_replica(tmp_path / "a", nats_url, openai[0], public, port_a, postgres_url, redis_url)
        )
        b = await stack.enter_async_context(
            gateway_replica(tmp_path / "b", nats_url, openai[0], public, port_b, postgres_url, redis_url)
        )
        await stack.enter_async_context(round_robin([("127.0.0.1", port_a), ("127.0.0.1", port_b)], port_lb))
        yield a, b, f"http://127.0.0.1:{port_lb}"


def chat(job: str, calls: int, **inp: Any) -> dict[str, Any]:
    body = {"calls": calls, "model": "gpt-4o-mini", "prompt": "Say hello.", "max_tokens": 10, **inp}
    return task(job, "chat", body, metadata={"estimate_tokens": "0"})


async def submit(app: RunningApp, pod: str, data: dict[str, Any]) -> None:
    response = await app.client.post("/api/v1/tasks", headers=app.auth(), json={**data, "tenant_id": pod})
    assert response.status_code == 202, response.text


async def calls_of(app: RunningApp, pod: str, job: str) -> list[Any]:
    async with app.fabric.engine.connect() as conn:
        query = select(llm_calls).where(llm_calls.c.tenant_id == pod, llm_calls.c.job_id == job)
        return list(await conn.execute(query))


async def keys_of(app: RunningApp, pod: str, job: str) -> list[Any]:
    async with app.fabric.engine.connect() as conn:
        return list(await conn.execute(select(llm_keys).where(llm_keys.c.tenant_id == pod, llm_keys.c.job_id == job)))


def tokens_counted(app: RunningApp) -> float:
    return sum(
        s.value
        for metric in app.fabric.metrics.tokens_total.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    )


async def test_a_tasks_calls_are_its_spend(replicas: Replicas) -> None:
    a, b, _ = replicas
    pod = new_pod()
    await submit(a, pod, task("att-1", "chat", {"calls": 4, "model": "gpt-4o-mini", "prompt": "Say hello."}))
    done = await task_status(a, "att-1", {"completed", "failed"}, pod, timeout=60)
    assert done["status"] == "completed", done
    assert done["result"]["answered"] == 4 and not done["result"]["refused"]
    rows = await calls_of(a, pod, "att-1")
    assert len(rows) == 4 and all(r.outcome == "ok" and r.agent_label == "builtin" for r in rows)
    spent = sum(r.total_tokens for r in rows)
    cost = sum(r.cost_usd for r in rows)
    assert spent == 4 * (12 + 16)  # prompt: 10 + 2 words; completion: max_tokens (16 by default)
    usage = done["usage"]
    assert usage["tokens"] == spent and usage["gateway_tokens"] == spent
    assert usage["cost_usd"] == pytest.approx(cost) and cost > 0
    # The calls went through both replicas (the balancer alternates connections).
    assert tokens_counted(a) > 0 and tokens_counted(b) > 0
    # Counted once in the tenant's budget: per call, not again when the task settled.
    await a.fabric.governance.budgets.fold()
    report = (await a.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=a.auth())).json()
    assert report["used"]["tokens"] == spent
    agent = (await a.client.get(f"/api/v1/budgets/agent:builtin?tenant_id={pod}", headers=a.auth())).json()
    assert agent["used"]["tokens"] >= spent
    # Its key died with it.
    keys = await keys_of(a, pod, "att-1")
    assert len(keys) == 1 and keys[0].revoked_at is not None and keys[0].kind == "task"
    entries = await _audited(a, "llm.call", pod, at_least=4)  # batched by whichever replica served
    assert len(entries) == 4 and {e["request"]["job_id"] for e in entries} == {"att-1"}


async def test_live_budget_cuts_the_task_mid_run_across_replicas(replicas: Replicas) -> None:
    a, b, _ = replicas
    pod = new_pod()
    # Each call: 22 tokens used (12 prompt + 10 completion); the gateway reserves its estimate
    # (10 for the prompt + max_tokens 10 = 20) first. Room for exactly 5 calls; the 6th needs
    # 5 * 22 + 20 = 130 > 129.
    limit = 5 * 22 + 20 - 1
    await set_tenant(a, pod, "LIVE", max_tokens=limit)
    await submit(b, pod, chat("cut-1", 12))
    done = await task_status(a, "cut-1", {"completed", "failed", "cancelled"}, pod, timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "budget_exceeded"
    assert "budget 'tenant'" in done["error"]["message"] and "tokens" in done["error"]["message"]
    rows = await calls_of(a, pod, "cut-1")
    answered = [r for r in rows if r.outcome == "ok"]
    refused = [r for r in rows if r.outcome == "refused_budget"]
    assert len(answered) == 5 and len(refused) == 1 and refused[0].status_code == 402
    spent = sum(r.total_tokens for r in answered)
    assert spent == 110 <= limit
    await a.fabric.governance.budgets.fold()
    report = (await a.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=a.auth())).json()
    assert report["used"]["tokens"] == spent and report["reserved"]["tokens"] == 0
    assert tokens_counted(a) > 0 and tokens_counted(b) > 0
    # The refusal was audited as an enforced overrun; the soft thresholds raised their alerts.
    # Audit entries are written in batches by whichever replica refused: wait for them to land.
    over = await _audited(a, "budget.over_limit", pod)
    assert len(over) == 1 and over[0]["response"]["enforced"] and over[0]["request"]["job_id"] == "cut-1"
    warnings = await _audited(a, "budget.warning", pod, at_least=2)
    assert {w["request"]["threshold_percent"] for w in warnings} >= {50.0, 75.0}
    assert all(k.revoked_at is not None for k in await keys_of(a, pod, "cut-1"))


async def _audited(app: RunningApp, action: str, pod: str, at_least: int = 1) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            while len(entries := await audit(app, action=action, tenant_id=pod)) < at_least:
                await asyncio.sleep(0.2)
    return entries


async def _sse_events(base: str, app: RunningApp, pod: str, job: str, seen: list[dict[str, Any]]) -> None:
    """Follow the task's SSE stream into `seen`; a {"kind": "live"} marks the switch to live events."""
    headers = app.auth()
    async with (
        httpx.AsyncClient(base_url=base, timeout=60) as http,
        http.stream("GET", f"/api/v1/tasks/{job}/events?tenant_id={pod}", headers=headers) as stream,
    ):
        assert stream.status_code == 200
        kind = None
        async for line in stream.aiter_lines():
            if line == ": live":
                seen.append({"kind": "live"})
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                seen.append({"kind": kind, **orjson.loads(line[5:])})
                if kind == "end":
                    return


async def test_tokens_reach_sse_while_the_completion_still_streams(
    replicas: Replicas, openai: tuple[str, OpenAIStandIn]
) -> None:
    a, b, base = replicas
    standin = openai[1]
    start, middle = standin.hold_at(0), standin.hold_at(3)  # the stream opens, then waits twice
    pod = new_pod()
    await submit(b, pod, chat("tok-1", 1, stream=True, max_tokens=6))
    await until(lambda: standin.streams_open == 1, timeout=30, what="the completion stream open")
    seen: list[dict[str, Any]] = []
    watcher = asyncio.create_task(_sse_events(base, a, pod, "tok-1", seen))
    await until(lambda: any(e["kind"] == "live" for e in seen), timeout=30, what="the SSE watcher live")
    start.set()
    tokens = lambda: [e["data"]["text"] for e in seen if e["kind"] == "token"]  # noqa: E731
    await until(lambda: len(tokens()) >= 3, timeout=30, what="first three tokens on SSE")
    assert tokens() == ["w0 ", "w1 ", "w2 "]
    assert standin.streams_open == 1  # the completion has not finished streaming
    middle.set()
    await asyncio.wait_for(watcher, 60)
    assert tokens() == [f"w{i} " for i in range(6)]
    assert seen[-1]["kind"] == "end" and seen[-1]["status"] == "completed"
    assert len({e["data"]["call_id"] for e in seen if e["kind"] == "token"}) == 1


async def test_tool_call_deltas_are_their_own_event_kind(replicas: Replicas) -> None:
    a, b, _ = replicas
    pod = new_pod()
    await submit(a, pod, task("tool-host", "sleep", {"seconds": 30}))
    await task_status(a, "tool-host", {"running"}, pod, timeout=30)
    spec = TaskSpec.model_validate({**task("tool-host", "sleep", {"seconds": 30}), "tenant_id": pod})
    env = await b.fabric.task_llm.endpoint_for(spec, 60)  # what a driver gets at dispatch
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    async with a.fabric.bus.subscribe(pod, "tool-host") as live, httpx.AsyncClient(timeout=30) as http:
        headers = {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"}
        async with http.stream("POST", env["OPENAI_BASE_URL"] + "/chat/completions", headers=headers, json=body) as r:
            assert r.status_code == 200
            [line async for line in r.aiter_lines()]
        events: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while len([e for e in events if e["kind"] == "tool_call"]) < 3:
                    events.append(await live.get())
    calls = [e for e in events if e["kind"] == "tool_call"]
    assert len(calls) == 3, events
    assert calls[0]["data"]["tool_calls"][0]["function"]["name"] == "get_weather"
    arguments = "".join(c["data"]["tool_calls"][0]["function"]["arguments"] for c in calls)
    assert orjson.loads(arguments) == {"city": "Oslo"}
    cancel = await a.client.post(f"/api/v1/tasks/tool-host/cancel?tenant_id={pod}", headers=a.auth(), json={})
    assert cancel.status_code in (200, 202)


async def test_cancel_revokes_the_tasks_key_on_every_replica(replicas: Replicas) -> None:
    a, b, base = replicas
    pod = new_pod()
    await submit(a, pod, task("rev-1", "sleep", {"seconds": 60}))
    await task_status(a, "rev-1", {"running"}, pod, timeout=30)
    spec = TaskSpec.model_validate({**task("rev-1", "sleep", {"seconds": 60}), "tenant_id": pod})
    env = await a.fabric.task_llm.endpoint_for(spec, 120)
    headers = {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for _ in range(2):  # both replicas accept it (and hold it in their key cache)
            assert (await http.get("/v1/models", headers=headers)).status_code == 200
        cancel = await b.client.post(f"/api/v1/tasks/rev-1/cancel?tenant_id={pod}", headers=b.auth(), json={})
        assert cancel.status_code in (200, 202), cancel.text
        # Neither accepts it any more: the revocation reached both caches well before their 60 s expiry.
        answers: list[int] = []

        async def both_refuse() -> bool:
            answers[:] = [(await http.get("/v1/models", headers=headers)).status_code for _ in range(2)]
            return answers == [401, 401]

        async with asyncio.timeout(15):
            while not await both_refuse():
                await asyncio.sleep(0.05)
    done = await task_status(a, "rev-1", {"cancelled"}, pod, timeout=30)
    assert done["status"] == "cancelled"
    assert all(k.revoked_at is not None for k in await keys_of(a, pod, "rev-1"))


async def test_a_task_bounds_its_own_model_spend(replicas: Replicas) -> None:
    a, b, _ = replicas
    pod = new_pod()
    await set_tenant(a, pod, "LIVE")  # no tenant budget: only the task's own limit binds
    data = chat("own-1", 6)
    data["metadata"]["llm_max_tokens"] = "50"  # 22 per call, 20 reserved first: room for two calls
    await submit(b, pod, data)
    done = await task_status(a, "own-1", {"completed", "failed"}, pod, timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "budget_exceeded"
    assert "budget 'task:own-1'" in done["error"]["message"]
    rows = await calls_of(a, pod, "own-1")
    assert sorted(r.outcome for r in rows) == ["ok", "ok", "refused_budget"]
    report = (await a.client.get(f"/api/v1/budgets/task:own-1?tenant_id={pod}", headers=a.auth())).json()
    assert report["used"]["tokens"] == 44 and report["limits"]["tokens"] == 50

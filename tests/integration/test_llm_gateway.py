"""The LLM gateway on its own: the OpenAI protocol both ways, metering, errors, secrets, policy.

The provider is the OpenAI stand-in (tests/support/openai_standin.py) over real HTTP; the fabric
runs on SQLite + NATS progress or Postgres + Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update

from agent_fabric.admission.budget_math import Amounts
from agent_fabric.llm_gateway.keys import KeyGrant
from agent_fabric.llm_gateway.stale_calls import StaleCallSweeper
from agent_fabric.settings import HttpSettings
from agent_fabric.storage.llm_tables import llm_calls, llm_upstream_keys
from agent_fabric.storage.tables import budget_ledger
from tests.conftest import RunningApp
from tests.integration.llm_fixtures import gateway_replica, instance_key, set_tenant
from tests.support.flows import audit, new_pod, put_policy
from tests.support.nats_server import free_port
from tests.support.openai_standin import UPSTREAM_KEY, OpenAIStandIn, running_openai_standin


@pytest.fixture
def openai() -> Iterator[tuple[str, OpenAIStandIn]]:
    with running_openai_standin() as served:
        yield served


@pytest.fixture
async def gateway(
    backend: str, tmp_path: Path, nats_url: str, postgres_url: str, redis_url: str, openai: tuple[str, Any]
) -> AsyncIterator[tuple[RunningApp, str]]:
    """(app, its base URL) on SQLite + NATS progress, or Postgres + Redis."""
    db, redis = (postgres_url, redis_url) if backend == "postgres" else (None, None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with gateway_replica(tmp_path, nats_url, openai[0], f"{base}/v1", port, db, redis) as app:
        yield app, base


async def _calls(app: RunningApp, pod: str) -> list[Any]:
    async with app.fabric.engine.connect() as conn:
        return list(await conn.execute(select(llm_calls).where(llm_calls.c.tenant_id == pod)))


async def test_openai_protocol_metering_and_errors(
    gateway: tuple[RunningApp, str], openai: tuple[str, OpenAIStandIn]
) -> None:
    app, base = gateway
    standin = openai[1]
    pod = new_pod()
    key = await instance_key(app, pod)
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        # No key, a wrong key, a JWT: 401 in OpenAI's shape.
        for headers in ({}, {"Authorization": "Bearer afk-nope"}, app.auth()):
            refused = await http.get("/v1/models", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert set(refused.json()["error"]) == {"message", "type", "code", "param"}
        listed = (await http.get("/v1/models", headers=auth)).json()
        assert {m["id"] for m in listed["data"]} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}

        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}
        plain = await http.post("/v1/chat/completions", headers=auth, json=body)
        assert plain.status_code == 200, plain.text
        assert plain.json()["object"] == "chat.completion"
        assert plain.json()["usage"] == {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}

        lines: list[str] = []
        async with http.stream("POST", "/v1/chat/completions", headers=auth, json={**body, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in streamed.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        assert orjson.loads(lines[-2][5:])["usage"]["total_tokens"] == 18  # asked for on the agent's behalf
        text = "".join(
            c["delta"].get("content") or "" for line in lines[:-1] for c in orjson.loads(line[5:])["choices"]
        )
        assert text == "w0 w1 w2 w3 w4 "

        guessed = await http.post("/v1/chat/completions", headers=auth, json={**body, "model": "nousage-1"})
        assert guessed.status_code == 200 and "usage" not in guessed.json()

        embedded = await http.post(
            "/v1/embeddings", headers=auth, json={"model": "text-embedding-3-small", "input": ["a b", "c"]}
        )
        assert embedded.status_code == 200 and embedded.json()["usage"]["total_tokens"] == 3

        # Errors stay in OpenAI's shape: unknown model, upstream 429, bad body.
        unknown = await http.post("/v1/chat/completions", headers=auth, json={**body, "model": "llama-9"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        limited = await http.post("/v1/chat/completions", headers=auth, json={**body, "model": "error-429"})
        assert limited.status_code == 429 and "Rate limit" in limited.json()["error"]["message"]
        broken = await http.post("/v1/chat/completions", headers=auth, content=b"{not json")
        assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
        missing = await http.post("/v1/chat/completions", headers=auth, json={"model": "gpt-4o-mini"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"

    # The upstream saw its own key and the usage request, never the gateway key.
    chats = [r for r in standin.requests if r["path"] == "/v1/chat/completions"]
    assert all(r["authorization"] == f"Bearer {UPSTREAM_KEY}" for r in chats)
    assert any((r["body"].get("stream_options") or {}).get("include_usage") for r in chats)
    assert not any(key in orjson.dumps(r).decode() for r in standin.requests)

    rows = {(r.model, r.stream, r.outcome): r for r in await _calls(app, pod)}
    exact = rows[("gpt-4o-mini", False, "ok")]
    assert (exact.prompt_tokens, exact.completion_tokens, exact.estimated) == (13, 5, False)
    assert exact.cost_usd == pytest.approx((13 * 0.15 + 5 * 0.6) / 1000)
    assert rows[("gpt-4o-mini", True, "ok")].total_tokens == 18
    estimate = rows[("nousage-1", False, "ok")]
    assert estimate.estimated and estimate.completion_tokens == 4  # "w0 w1 w2 w3 w4 " is 15 characters
    assert rows[("error-429", False, "upstream_error")].total_tokens == 0
    metrics = (await app.client.get("/metrics")).text
    assert 'agent_fabric_tokens_total{agent_id="agent-zero",model="gpt-4o-mini"} 36.0' in metrics

    entries = await audit(app, action="llm.call", tenant_id=pod)
    assert len(entries) == 5 and all("messages" not in e["request"] for e in entries)
    assert {e["response"]["outcome"] for e in entries} == {"ok", "upstream_error"}
    everything = orjson.dumps(await audit(app, tenant_id=pod)).decode()
    assert UPSTREAM_KEY not in everything and key not in everything


async def test_tenant_upstream_key_is_sealed_and_never_shown(
    gateway: tuple[RunningApp, str], openai: tuple[str, OpenAIStandIn]
) -> None:
    app, base = gateway
    pod = new_pod()
    key = await instance_key(app, pod)
    wrong = "sk-tenant-wrong-key-0123456789abcdef"
    put = await app.client.put(
        f"/api/v1/llm/upstream-keys/standin?tenant_id={pod}", headers=app.auth(), json={"api_key": wrong}
    )
    assert put.status_code == 200 and wrong not in put.text
    async with app.fabric.engine.connect() as conn:
        stored = (await conn.execute(select(llm_upstream_keys.c.sealed_key))).scalars().all()
    assert stored and all(s.startswith("sealed:v1:") and wrong not in s for s in stored)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        refused = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
    # The provider quoted the key's ends; the gateway says only that its credentials were refused.
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "upstream_error"
    assert wrong[-4:] not in refused.text and "credentials" in refused.json()["error"]["message"]
    assert openai[1].requests[-1]["authorization"] == f"Bearer {wrong}"
    assert (
        await app.client.delete(f"/api/v1/llm/upstream-keys/standin?tenant_id={pod}", headers=app.auth())
    ).status_code == 200
    everything = orjson.dumps(await audit(app, tenant_id=pod)).decode()
    assert wrong not in everything and "sk-tenant" not in everything


async def test_model_policy_denies_or_requires_approval(gateway: tuple[RunningApp, str]) -> None:
    app, base = gateway
    pod = new_pod()
    key = await instance_key(app, pod)
    await put_policy(
        app,
        f"models-{pod}",
        [
            {"action_pattern": "model:gpt-4o", "effect": "require_approval"},
            {"action_pattern": "model:text-embedding-*", "effect": "deny"},
        ],
        tenant=pod,
    )
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        denied = await http.post("/v1/embeddings", headers=auth, json={"model": "text-embedding-3-small", "input": "x"})
        held = await http.post(
            "/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
        allowed = await http.post(
            "/v1/chat/completions",
            headers=auth,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_denied"
    assert held.status_code == 403 and held.json()["error"]["code"] == "model_requires_approval"
    assert allowed.status_code == 200
    decisions = await audit(app, action="policy.decision", tenant_id=pod)
    assert {d["request"]["action"] for d in decisions} >= {"model:gpt-4o", "model:text-embedding-3-small"}


async def test_sandbox_tracks_an_overrun_and_records_prompts_when_asked(gateway: tuple[RunningApp, str]) -> None:
    app, base = gateway
    pod = new_pod()
    await set_tenant(app, pod, "SANDBOX", max_tokens=10)
    config = await app.client.put(
        f"/api/v1/config/{pod}",
        headers=app.auth(),
        json={"mode": "SANDBOX", "budget": {"max_tokens": 10, "period": "daily"}, "llm": {"record_prompts": True}},
    )
    assert config.status_code == 200, config.text
    key = await instance_key(app, pod)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "password=hunter2 hello"}],
        "max_tokens": 50,
    }
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for _ in range(2):
            answered = await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
            assert answered.status_code == 200
    over = await audit(app, action="budget.over_limit", tenant_id=pod)
    assert over and not any(e["response"]["enforced"] for e in over)
    calls = await audit(app, action="llm.call", tenant_id=pod)
    assert calls[0]["request"]["completion"].startswith("w0 w1")
    recorded = orjson.dumps(calls[0]["request"]["messages"]).decode()
    assert "hello" in recorded and "hunter2" not in recorded
    await app.fabric.governance.budgets.fold()
    report = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=app.auth())).json()
    assert report["used"]["tokens"] == 2 * (10 + 2 + 50)


async def test_a_caller_leaving_mid_stream_is_still_metered_and_settled(
    gateway: tuple[RunningApp, str], openai: tuple[str, OpenAIStandIn]
) -> None:
    app, base = gateway
    pod = new_pod()
    await set_tenant(app, pod, "LIVE", max_tokens=10_000)
    key = await instance_key(app, pod)
    gate = openai[1].hold_at(2)  # two tokens, then the provider holds the stream
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
        ) as streamed:
            seen = 0
            async for line in streamed.aiter_lines():
                seen += '"content":"w' in line
                if seen == 2:
                    break  # the caller goes away with the stream still open
    gate.set()
    rows: list[Any] = []

    async def recorded() -> bool:
        rows[:] = await _calls(app, pod)
        return bool(rows)

    async with asyncio.timeout(15):
        while not await recorded():
            await asyncio.sleep(0.05)
    # The gateway sees the caller gone at its next write; if the released upstream finished first,
    # the call completed with the provider's own usage instead. Either way it is metered and settled.
    if rows[0].outcome == "stream_aborted":
        assert rows[0].estimated and rows[0].completion_tokens >= 1  # what it had received is counted
    else:
        assert rows[0].outcome == "ok" and rows[0].completion_tokens >= 2
    await app.fabric.governance.budgets.fold()
    report = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=app.auth())).json()
    assert report["reserved"]["tokens"] == 0 and report["used"]["tokens"] == rows[0].total_tokens


async def test_each_key_is_rate_limited_in_openai_shape(
    tmp_path: Path, nats_url: str, openai: tuple[str, OpenAIStandIn]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    limits = HttpSettings(rate_limit_per_second=0.1, rate_limit_burst=2)
    async with gateway_replica(tmp_path, nats_url, openai[0], f"{base}/v1", port, http=limits) as app:
        pod = new_pod()
        first, second = await instance_key(app, pod), await instance_key(app, pod)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            answers = [(await http.get("/v1/models", headers={"Authorization": f"Bearer {first}"})) for _ in range(3)]
            other = await http.get("/v1/models", headers={"Authorization": f"Bearer {second}"})
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "rate_limit_exceeded" and int(answers[2].headers["retry-after"]) >= 1
    assert other.status_code == 200  # limits are per key


async def test_a_reservation_whose_call_never_settled_is_swept(gateway: tuple[RunningApp, str]) -> None:
    """A replica that died mid-call leaves its call's reservation; the sweep settles it at its
    estimate (the call may have run upstream) so the budget's room comes back as spend, not held."""
    app, _ = gateway
    pod = new_pod()
    await set_tenant(app, pod, "LIVE", max_tokens=1000)
    grant = KeyGrant(pod, "instance", "agent-zero", instance_id="a0")
    guard = app.fabric.llm._guard
    await guard.reserve(grant, "deadbeef", Amounts(tokens=300))
    await app.fabric.governance.budgets.fold()
    report = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=app.auth())).json()
    assert report["reserved"]["tokens"] == 300
    sweeper = StaleCallSweeper(app.fabric.engine, upstream_timeout_seconds=300)
    assert await sweeper.sweep() == 0  # not stale yet
    async with app.fabric.engine.begin() as conn:  # ... six minutes later
        await conn.execute(
            update(budget_ledger)
            .where(budget_ledger.c.job_id == "llm:deadbeef")
            .values(created_at=datetime.now(UTC) - timedelta(minutes=6))
        )
    assert await sweeper.sweep() == 1
    await app.fabric.governance.budgets.fold()
    report = (await app.client.get(f"/api/v1/budgets/tenant?tenant_id={pod}", headers=app.auth())).json()
    assert report["reserved"]["tokens"] == 0 and report["used"]["tokens"] == 300


async def test_prompts_larger_than_task_events_pass_and_refusals_keep_the_openai_shape(
    tmp_path: Path, nats_url: str, openai: tuple[str, OpenAIStandIn]
) -> None:
    """The gateway has its own body limit (LLM_MAX_REQUEST_BYTES): a prompt past the task-event
    limit is answered; one past the gateway's limit, or nested too deep, is refused before the
    gateway in OpenAI's error shape (an SDK parses it), while /api keeps problem JSON."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with gateway_replica(
        tmp_path,
        nats_url,
        openai[0],
        f"{base}/v1",
        port,
        llm={"max_request_bytes": 512 * 1024},
        max_event_bytes=16 * 1024,
    ) as app:
        key = await instance_key(app, new_pod())
        auth = {"Authorization": f"Bearer {key}"}

        def chat(words: int) -> dict[str, Any]:
            prompt = "word " * words
            return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}

        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            long_prompt = await http.post("/v1/chat/completions", headers=auth, json=chat(40_000))  # ~200 KB
            too_long = await http.post("/v1/chat/completions", headers=auth, json=chat(120_000))  # ~600 KB
            deep = {"model": "gpt-4o-mini", "messages": [], "metadata": orjson.loads("[" * 200 + "]" * 200)}
            too_deep = await http.post("/v1/chat/completions", headers=auth, json=deep)
            api_too_long = await http.post("/api/v1/tasks", headers=app.auth(), content=b"{" + b" " * 100_000 + b"}")
    assert long_prompt.status_code == 200, long_prompt.text
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "payload_too_large"
    assert "524288" in too_long.json()["error"]["message"]
    assert too_deep.status_code == 400 and too_deep.json()["error"]["code"] == "json_too_deep"
    assert api_too_long.status_code == 413 and api_too_long.json()["code"] == "payload_too_large"

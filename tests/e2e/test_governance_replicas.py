"""Governance across real processes: live policy updates on every replica, approvals surviving a
kill -9, and two replicas enforcing one budget atomically. Real NATS, Postgres, Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import SecuritySettings, Settings
from tests.support.serve import JWT_SECRET, ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def env(replica_env: dict[str, str]) -> dict[str, str]:
    return replica_env


def bearer(subject: str, role: str = "pod_admin", tenant: str | None = None) -> dict[str, str]:
    tokens = TokenService(Settings(jwt=SecuritySettings(secret=JWT_SECRET)))
    token = tokens.issue(role=role, subject=subject, tenant_id=None if role == "admin" else tenant)
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer("root", "admin")


async def start(*servers: ServeProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))


def stop(*servers: ServeProcess) -> None:
    for server in servers:
        server.stop()


async def status_of(client: httpx.AsyncClient, url: str, job: str, pod: str, want: set[str]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            r = await client.get(f"{url}/api/v1/tasks/{job}?tenant_id={pod}", headers=ADMIN)
            if r.status_code == 200 and r.json()["status"] in want:
                return dict(r.json())
            await asyncio.sleep(0.1)


async def test_a_policy_update_applies_on_every_replica_within_a_second(tmp_path: Path, env: dict[str, str]) -> None:
    a, b = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(a, b)
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    agent = bearer("bot", "agent", pod)
    check = {"action": "task:DEPLOY_GPU", "context": {}}
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def effect_on_b() -> str:
                r = await client.post(f"{b.url}/api/v1/policies/check", headers=agent, json=check)
                return str(r.json()["effect"])

            assert await effect_on_b() == "require_approval"  # the built-in high-impact gate, until a rule decides
            lags = []
            for version, effect in enumerate(("deny", "require_approval", "allow"), start=1):
                body = {"scope": {"tenant_id": pod}, "rules": [{"action_pattern": "task:DEPLOY_*", "effect": effect}]}
                stored = time.monotonic()
                put = await client.put(f"{a.url}/api/v1/policies/{pod}-gpu", headers=ADMIN, json=body)
                assert put.status_code in (200, 201) and put.json()["version"] == version
                while await effect_on_b() != effect:
                    assert time.monotonic() - stored < 1.0, f"replica b still not at v{version} after 1 s"
                    await asyncio.sleep(0.01)
                lags.append(time.monotonic() - stored)
            # Tenant configuration travels the same way.
            stored = time.monotonic()
            config = await client.put(f"{a.url}/api/v1/config/{pod}", headers=ADMIN, json={"mode": "LIVE"})
            assert config.status_code == 200
            while (await client.get(f"{b.url}/api/v1/config/{pod}", headers=ADMIN)).json()["mode"] != "LIVE":
                assert time.monotonic() - stored < 1.0, "replica b still not LIVE after 1 s"
                await asyncio.sleep(0.01)
            lags.append(time.monotonic() - stored)
            refused = await client.put(
                f"{a.url}/api/v1/policies/{pod}-gpu", headers=ADMIN, json={"scope": {"tenant_id": pod}, "rules": [{}]}
            )
            assert refused.status_code == 422 and refused.json()["code"] == "invalid_policy"
            assert await effect_on_b() == "allow"  # the refused version never applied anywhere
    finally:
        stop(a, b)
    assert max(lags) < 1.0
    for server in (a, b):
        assert "Traceback" not in server.log()


async def test_waiting_approvals_survive_a_kill_9(tmp_path: Path, env: dict[str, str]) -> None:
    a = ServeProcess(tmp_path / "a", env, "a")
    await start(a)
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    alice, bob = bearer("alice", tenant=pod), bearer("bob", tenant=pod)
    rules = [
        {"action_pattern": "task:sleep", "effect": "require_approval", "approvers": ["bob"]},
        {"action_pattern": "task:echo", "effect": "require_approval", "approval_ttl_seconds": 2},
    ]
    b: ServeProcess | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            put = await client.put(
                f"{a.url}/api/v1/policies/{pod}-gate", headers=ADMIN, json={"scope": {"tenant_id": pod}, "rules": rules}
            )
            assert put.status_code == 201
            approvals = {}
            for job, kind, inp in (("approve-me", "sleep", {"seconds": 0.2}), ("expire-me", "echo", {})):
                body = {"job_id": job, "agent_definition": {"runtime": "builtin"}, "task": {"type": kind, "input": inp}}
                r = await client.post(f"{a.url}/api/v1/tasks", headers=alice, json=body)
                assert r.status_code == 202 and r.json()["status"] == "awaiting_approval"
                approvals[job] = r.json()["approval"]["id"]
            a.kill9()

            b = ServeProcess(tmp_path / "b", env, "b")
            await start(b)
            waiting = await client.get(f"{b.url}/api/v1/approvals/{approvals['approve-me']}", headers=bob)
            assert waiting.json()["status"] == "pending"
            decided = await client.post(f"{b.url}/api/v1/approvals/{approvals['approve-me']}/approve", headers=bob)
            assert decided.status_code == 200
            done = await status_of(client, b.url, "approve-me", pod, {"completed", "failed", "rejected"})
            assert done["status"] == "completed" and done["result"]["slept"] == 0.2
            expired = await status_of(client, b.url, "expire-me", pod, {"rejected"})
            assert expired["error"]["code"] == "approval_expired"
            trail = await client.get(f"{b.url}/api/v1/audit?tenant_id={pod}&action=approval.", headers=ADMIN)
            actions = sorted(e["action"] for e in trail.json()["items"])
            assert actions == ["approval.approved", "approval.expired", "approval.requested", "approval.requested"]
    finally:
        stop(a, *([b] if b else []))


async def test_two_replicas_admit_at_most_the_budget(tmp_path: Path, env: dict[str, str]) -> None:
    a, b = ServeProcess(tmp_path / "a", env, "a"), ServeProcess(tmp_path / "b", env, "b")
    await start(a, b)
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    alice = bearer("alice", tenant=pod)
    try:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            config = {"mode": "LIVE", "budget": {"max_cost_usd": 50, "period": "monthly"}}
            assert (await client.put(f"{a.url}/api/v1/config/{pod}", headers=ADMIN, json=config)).status_code == 200

            async def submit(i: int) -> int:
                body = {
                    "job_id": f"race-{i}",
                    "agent_definition": {"runtime": "builtin"},
                    "task": {"type": "spend", "input": {"cost_usd": 1}},
                    "metadata": {"estimate_cost_usd": "1"},
                }
                r = await client.post(f"{(a, b)[i % 2].url}/api/v1/tasks", headers=alice, json=body)
                assert r.status_code in (202, 402), r.text
                return r.status_code

            codes = await asyncio.gather(*(submit(i) for i in range(200)))
            admitted = codes.count(202)
            assert admitted == 50, f"admitted {admitted} of 200 against a budget of 50"
            async with asyncio.timeout(30):
                while True:
                    report = (await client.get(f"{b.url}/api/v1/budgets/tenant?tenant_id={pod}", headers=alice)).json()
                    if report["used"]["cost_usd"] == admitted:
                        break
                    await asyncio.sleep(0.2)
            assert report["reserved"]["cost_usd"] == 0 and report["usage_ratio"] == 1.0
            late = await client.post(
                f"{b.url}/api/v1/tasks",
                headers=alice,
                json={"job_id": "late", "agent_definition": {"runtime": "builtin"}, "task": {"type": "echo"}},
            )
            assert late.status_code == 402
    finally:
        stop(a, b)

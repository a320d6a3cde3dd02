"""Small helpers for governance tests: tasks, tokens for named people, waiting, collecting events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from nats.aio.client import Client

from agent_fabric.security.tokens import TokenService
from agent_fabric.settings import SecuritySettings, Settings
from tests.conftest import JWT_SECRET, RunningApp


def task(job_id: str, kind: str = "echo", inp: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "agent_definition": {"runtime": "builtin"},
        "task": {"type": kind, "input": inp if inp is not None else {}},
        **extra,
    }


def structured(data: dict[str, Any], *, event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id or uuid.uuid4().hex,
            "source": "test/agent",
            "type": "agent.execute",
            "data": data,
        }
    )


def publisher_auth(role: str = "admin", tenant: str | None = None, subject: str = "test-publisher") -> dict[str, str]:
    """The header a NATS publisher sends with its tasks (issue 15): a JWT every test app accepts,
    signed with the tests' JWT_SECRET, for apps a helper cannot reach."""
    settings = Settings(jwt=SecuritySettings(secret=JWT_SECRET))
    token = TokenService(settings).issue(role=role, subject=subject, tenant_id=None if role == "admin" else tenant)
    return {"Authorization": f"Bearer {token}"}


def new_pod() -> str:
    """A tenant of its own per test: the Postgres database is shared by the whole session."""
    return f"pod-{uuid.uuid4().hex[:10]}"


def auth_as(app: RunningApp, subject: str, role: str, tenant: str | None) -> dict[str, str]:
    token = app.fabric.tokens.issue(role=role, subject=subject, tenant_id=None if role == "admin" else tenant)
    return {"Authorization": f"Bearer {token}"}


async def until(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s") from None


async def task_status(
    app: RunningApp, job: str, statuses: set[str], tenant: str = "pod-1", timeout: float = 15
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            response = await app.client.get(f"/api/v1/tasks/{job}?tenant_id={tenant}", headers=app.auth())
            if response.status_code == 200 and response.json()["status"] in statuses:
                return dict(response.json())
            await asyncio.sleep(0.05)


@asynccontextmanager
async def collect(nc: Client, subject: str) -> AsyncIterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def on_msg(msg: Any) -> None:
        seen.append(orjson.loads(msg.data))

    sub = await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


def for_job(events: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("job_id") == job_id]


async def put_policy(
    app: RunningApp, policy_id: str, rules: list[dict[str, Any]], tenant: str = "pod-1", **extra: Any
) -> dict[str, Any]:
    response = await app.client.put(
        f"/api/v1/policies/{policy_id}",
        headers=app.auth(),
        json={"scope": {"tenant_id": tenant}, "rules": rules, **extra},
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def audit(app: RunningApp, **params: Any) -> list[dict[str, Any]]:
    """Everything the audit trail holds for the query, after the batched writer flushed."""
    await app.fabric.governance.audit.flush()
    response = await app.client.get("/api/v1/audit", headers=app.auth(), params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])
